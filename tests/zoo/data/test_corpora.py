"""Corpora: built-in sources, user files, deterministic disjoint splits, clear errors."""

import collections
import json
import os
import sys

import pytest

from zoo.data import corpora
from zoo.data.errors import DataFormatError
from zoo.data.errors import MissingCorpusError

DEFAULT_WORDNET = ["noun.animal", "noun.artifact", "noun.food", "noun.plant"]


@pytest.fixture(scope="module")
def wordnet_splits():
    return {split: corpora.labelled_examples("wordnet", split) for split in corpora.SPLITS}


# ----------------------------------------------------------------------------- stdlib


def test_stdlib_is_the_library_without_its_tests():
    keys = corpora.document_keys("stdlib", "train")
    # 731 non-empty library files in CPython 3.11 once the 1,056 test files are gone.
    assert len(keys) > 600
    assert all(key.endswith(".py") for key in keys)
    for key in keys:
        parts = key.split(os.sep)
        assert not set(parts[:-1]) & {"test", "tests", "idle_test", "site-packages"}, key
    assert "os.py" in corpora.document_keys("stdlib", "train") + corpora.document_keys(
        "stdlib", "validation"
    ) + corpora.document_keys("stdlib", "test")
    documents = corpora.text_documents("stdlib")
    assert len(documents) > 600
    assert all(document.strip() for document in documents)
    # Test modules subclass unittest.TestCase; the library itself does so only in doctest and
    # unittest/__init__ (docstrings).
    assert sum("(unittest.TestCase)" in document for document in documents) <= 2


@pytest.mark.parametrize("source", ["stdlib", "python-docs", "fortunes"])
def test_lm_splits_are_disjoint_complete_and_deterministic(source):
    splits = {split: corpora.document_keys(source, split) for split in corpora.SPLITS}
    sets = {split: set(keys) for split, keys in splits.items()}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    total = sum(len(keys) for keys in splits.values())
    assert 0.85 < len(splits["train"]) / total < 0.95
    assert len(splits["validation"]) > 0 and len(splits["test"]) > 0
    again = {split: corpora.document_keys(source, split) for split in corpora.SPLITS}
    assert again == splits  # same members, same order


def test_max_documents_is_a_prefix_of_the_split():
    first = corpora.text_documents("stdlib", "validation", max_documents=5)
    assert len(first) == 5
    assert first == corpora.text_documents("stdlib", "validation")[:5]


def test_python_docs_are_restructured_text():
    documents = corpora.text_documents("python-docs", "validation")
    assert len(documents) > 10
    assert sum(".. " in document for document in documents) > len(documents) / 2


def test_fortunes_are_single_quotations():
    documents = corpora.text_documents("fortunes", "train")
    assert len(documents) > 10000
    assert not any("\n%\n" in d or d.startswith("%\n") or d == "%" for d in documents)
    assert len(set(documents)) == len(documents)


@pytest.mark.parametrize(
    "attribute, source, command",
    [
        (
            "PYTHON_DOCS_DIR",
            "python-docs",
            f"apt-get install python{sys.version_info.major}.{sys.version_info.minor}-doc",
        ),
        ("FORTUNES_DIR", "fortunes", "apt-get install fortunes fortunes-min"),
        ("WORDNET_DIR", "wordnet", "apt-get install wordnet-base"),
    ],
)
def test_missing_corpus_names_the_install_command(monkeypatch, tmp_path, attribute, source, command):
    monkeypatch.setattr(corpora, attribute, str(tmp_path / "not-installed"))
    with pytest.raises(MissingCorpusError) as caught:
        if source == "wordnet":
            corpora.labelled_examples(source)
        else:
            corpora.text_documents(source)
    assert isinstance(caught.value, FileNotFoundError)
    assert command in str(caught.value)
    assert source in str(caught.value)


def test_unknown_source_and_split_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="stdlib.*python-docs.*fortunes"):
        corpora.text_documents("stdlb")
    with pytest.raises(ValueError, match="wordnet.*fortunes"):
        corpora.labelled_examples("wordnt")
    with pytest.raises(ValueError, match="train, validation, test"):
        corpora.text_documents("stdlib", split="valid")
    with pytest.raises(ValueError, match="stdlib"):
        corpora.text_documents("wordnet")  # a classification source
    missing = str(tmp_path / "nowhere" / "corpus.txt")
    with pytest.raises(FileNotFoundError, match="corpus.txt"):
        corpora.text_documents(missing)
    with pytest.raises(FileNotFoundError, match="nothing"):
        corpora.text_documents(str(tmp_path / "nothing*.txt"))


# ----------------------------------------------------------------------------- wordnet


def test_wordnet_default_is_four_balanced_classes(wordnet_splits):
    counts = {
        split: collections.Counter(examples.labels) for split, examples in wordnet_splits.items()
    }
    assert counts["train"] == {0: 1600, 1: 1600, 2: 1600, 3: 1600}
    assert counts["validation"] == {0: 200, 1: 200, 2: 200, 3: 200}
    assert counts["test"] == {0: 200, 1: 200, 2: 200, 3: 200}
    for examples in wordnet_splits.values():
        assert examples.label_names == DEFAULT_WORDNET
        assert len(examples.texts) == len(examples.labels)
    # Glosses only: no synset offsets, pointers or the " | " separator.
    for text in wordnet_splits["train"].texts[:200]:
        assert " | " not in text and not text[:8].isdigit() and text == text.strip()


def test_wordnet_splits_are_disjoint_and_deterministic(wordnet_splits):
    texts = {split: set(examples.texts) for split, examples in wordnet_splits.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert corpora.labelled_examples("wordnet", "validation") == wordnet_splits["validation"]


def test_wordnet_labels_follow_the_lexicographer_file():
    names = []
    texts = {}
    for split in corpora.SPLITS:
        examples = corpora.labelled_examples("wordnet", split, categories=["noun.Tops", "verb.weather"])
        names.append(examples.label_names)
        for text, label in zip(examples.texts, examples.labels):
            texts[text] = examples.label_names[label]
    assert names == [["noun.Tops", "verb.weather"]] * 3
    entity = "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"
    assert texts[entity] == "noun.Tops"
    # "rain" (verb): precipitate as rain
    assert texts['precipitate as rain; "If it rains much more, we can expect some flooding"'] == "verb.weather"


def test_wordnet_examples_per_class_caps_every_class():
    examples = corpora.labelled_examples(
        "wordnet", "train", categories=["noun.plant", "noun.animal"], examples_per_class=100
    )
    assert collections.Counter(examples.labels) == {0: 80, 1: 80}
    assert examples.label_names == ["noun.animal", "noun.plant"]


def test_wordnet_unknown_category_lists_the_valid_ones():
    with pytest.raises(ValueError) as caught:
        corpora.labelled_examples("wordnet", categories=["noun.animal", "noun.unicorn"])
    message = str(caught.value)
    assert "noun.unicorn" in message
    for name in ("noun.animal", "noun.Tops", "verb.weather", "adj.ppl"):
        assert name in message
    assert len(corpora.wordnet_lexnames()) == 45


def test_fortunes_classification_labels_are_category_files():
    examples = corpora.labelled_examples("fortunes", "validation", categories=["science", "computers"])
    assert examples.label_names == ["computers", "science"]
    counts = collections.Counter(examples.labels)
    assert counts[0] > 50 and counts[1] > 50


# ----------------------------------------------------------------------------- user files


def _rows(count_per_label=10, labels=("negative", "neutral", "positive")):
    return [
        (f'review {i} of "{label}", with, commas\nand a second line', label)
        for label in labels
        for i in range(count_per_label)
    ]


def _check_user_file(path, rows, label_names):
    seen = {}
    for split in corpora.SPLITS:
        examples = corpora.labelled_examples(str(path), split)
        assert examples.label_names == label_names
        assert collections.Counter(examples.labels) == {
            i: {"train": 8, "validation": 1, "test": 1}[split] for i in range(len(label_names))
        }
        for text, label in zip(examples.texts, examples.labels):
            assert text not in seen
            seen[text] = label_names[label]
    assert seen == {text: str(label) for text, label in rows}


def test_csv_file_loads_with_stratified_splits(tmp_path):
    import csv

    rows = _rows()
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "label", "text"])
        for i, (text, label) in enumerate(rows):
            writer.writerow([i, label, text])
    _check_user_file(path, rows, ["negative", "neutral", "positive"])


def test_jsonl_file_loads_and_integer_labels_keep_their_ids(tmp_path):
    rows = _rows(labels=tuple(range(12)))
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows) + "\n")
    names = [str(i) for i in range(12)]  # numeric order: "10" after "9"
    _check_user_file(path, rows, names)
    train = corpora.labelled_examples(str(path), "train")
    truth = dict(rows)
    assert all(truth[text] == label for text, label in zip(train.texts, train.labels))


def test_bad_json_line_reports_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": \n')
    with pytest.raises(DataFormatError) as caught:
        corpora.labelled_examples(str(path))
    assert caught.value.line == 3 and caught.value.path == str(path)
    assert "data.jsonl:3:" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_jsonl_missing_label_reports_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b"}\n')
    with pytest.raises(DataFormatError, match=r"data.jsonl:3: expected keys text,label, got text"):
        corpora.labelled_examples(str(path))


def test_csv_errors_report_file_and_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,category\nhello,a\n")
    with pytest.raises(DataFormatError, match=r"data.csv:1: expected columns text,label, got text,category"):
        corpora.labelled_examples(str(path))
    path.write_text("text,label\nhello,a\nworld\n")
    with pytest.raises(DataFormatError, match=r"data.csv:3:"):
        corpora.labelled_examples(str(path))
    path.write_text("text,label\nhello,a\nworld,b\nagain,\n")
    with pytest.raises(DataFormatError, match=r"data.csv:4: empty label"):
        corpora.labelled_examples(str(path))


def test_unknown_user_category_lists_the_labels(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in _rows()))
    with pytest.raises(ValueError, match="negative, neutral, positive"):
        corpora.labelled_examples(str(path), categories=["happy"])
    two = corpora.labelled_examples(str(path), categories=["positive", "negative"])
    assert two.label_names == ["negative", "positive"]


def test_lm_directory_glob_and_single_file(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    contents = {f"corpus/doc{i}.txt": f"document number {i}\n" for i in range(40)}
    contents["corpus/sub/deep.md"] = "a nested document\n"
    contents["corpus/.hidden"] = "never read\n"
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "corpus" / "blob.bin").write_bytes(b"\x00\x01binary")
    everything = [
        doc for split in corpora.SPLITS for doc in corpora.text_documents(str(tmp_path / "corpus"), split)
    ]
    expected = sorted(text for name, text in contents.items() if ".hidden" not in name)
    assert sorted(everything) == expected
    matched = [
        doc for split in corpora.SPLITS for doc in corpora.text_documents(str(tmp_path / "corpus/doc1*.txt"), split)
    ]
    assert sorted(matched) == sorted(f"document number {i}\n" for i in [1] + list(range(10, 20)))
    single = tmp_path / "book.txt"
    single.write_text("\n\n".join(f"paragraph {i}\nstill paragraph {i}" for i in range(50)) + "\n")
    paragraphs = [
        doc for split in corpora.SPLITS for doc in corpora.text_documents(str(single), split)
    ]
    assert sorted(paragraphs) == sorted(f"paragraph {i}\nstill paragraph {i}" for i in range(50))
