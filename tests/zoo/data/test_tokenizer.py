"""WordPiece tokenizer: the learner, special token ids, casing, the cache, status lines and
progress bars, save/load round trips."""

import json
import os
import re

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from zoo.data import corpora
from zoo.data import tokenizer as tokenizers

VOCABULARY_SIZE = 1000
ROUND_TRIP_TEXTS = [
    "def read_config(path: str) -> dict:\n    return json.load(open(path))  # TODO",
    "True is not true, and None is not none.",
    "naïve café, Ünïcödé façade — “quotes” ½",
    "日本語のテキストと中文",
    "emoji 🎉🐍👍🏽 and ZWJ 👩‍💻",
    "[MASK] [SEP] [CLS] stay plain text",
    "",
    "supercalifragilisticexpialidocious" * 5,
]


@pytest.fixture(scope="module")
def stdlib_slice():
    return corpora.text_documents("stdlib", max_documents=12)


@pytest.fixture(scope="module")
def tokenizer(stdlib_slice, tmp_path_factory):
    # test_pipelines.py asks for the same cache entry, so the suite trains this only once.
    cache_dir = tmp_path_factory.getbasetemp() / "zoo-tokenizer-cache"
    return tokenizers.train_tokenizer(
        stdlib_slice, VOCABULARY_SIZE, cache_dir=str(cache_dir), cache_key="stdlib-slice"
    )


def _ids(tokenizer, text):
    """Ids from an eager call (keras-hub's pure-Python path)."""
    return np.asarray(tokenizer(text)).tolist()


def _graph_ids(tokenizer, texts):
    """Ids from inside a tf.function (the TensorFlow path that tf.data and exports use)."""
    return tf.function(lambda batch: tokenizer(batch))(tf.constant(texts)).to_list()


def test_special_tokens_sit_at_ids_0_to_4(tokenizer):
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizers.SPECIAL_TOKENS == vocabulary[:5]
    assert (tokenizers.PAD_ID, tokenizers.CLS_ID, tokenizers.SEP_ID) == (0, 2, 3)
    assert [tokenizer.token_to_id(t) for t in tokenizers.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.vocabulary_size() == VOCABULARY_SIZE
    assert len(set(vocabulary)) == VOCABULARY_SIZE
    assert isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer)


def test_special_token_text_is_not_a_special_token(tokenizer):
    ids = _ids(tokenizer, "[MASK] [SEP]")
    assert not set(ids) & {0, 2, 3, 4}


def test_tokenizer_is_cased_and_learned_code(tokenizer):
    assert _ids(tokenizer, "True") != _ids(tokenizer, "true")
    assert _ids(tokenizer, "None") != _ids(tokenizer, "none")
    # Frequent identifiers of the training code are single pieces, not characters.
    for word in ("def", "return", "self", "import"):
        assert len(_ids(tokenizer, word)) == 1, word
    assert tokenizers.UNK_ID not in _ids(tokenizer, ROUND_TRIP_TEXTS[0])


def test_uncased_tokenizer_folds_case_and_accents():
    texts = ["True or False, Café or CAFE, true or false, cafe"] * 20
    uncased = tokenizers.train_tokenizer(texts, 60, lowercase=True)
    assert _ids(uncased, "True Café") == _ids(uncased, "true cafe")
    assert uncased.vocabulary_size() == 60  # padded with [unusedN] beyond what was learned


def test_learned_vocabulary_is_exact_complete_and_deterministic():
    # Fortunes: hundreds of short English documents, learned uncased.
    texts = corpora.text_documents("fortunes", max_documents=150)
    vocabulary = tokenizers.train_tokenizer(texts, 400, lowercase=True).get_vocabulary()
    assert vocabulary[:5] == tokenizers.SPECIAL_TOKENS
    assert len(vocabulary) == len(set(vocabulary)) == 400
    assert not any(token.startswith("[unused") for token in vocabulary)  # enough text for 400 pieces
    # Every character of the words the tokenizer meets is a piece alone and after "##", so a
    # word of those characters always has a tokenization: none of the training text is [UNK].
    characters = {c for word in tokenizers._word_counts(texts, lowercase=True) for c in word}
    assert len(characters) > 26
    assert characters | {"##" + c for c in characters} <= set(vocabulary)
    assert not any(token != token.lower() for token in vocabulary[5:])  # uncased: folded first
    tokenizer = tokenizers._make_tokenizer(vocabulary, lowercase=True, strip_accents=True)
    assert tokenizers.UNK_ID not in [i for ids in _graph_ids(tokenizer, texts) for i in ids]
    # Deterministic: the same texts, in this or another order, give the very same vocabulary
    # (the trainer of `tokenizers` alone breaks ties in hash-map order, which varies by run).
    assert tokenizers.train_tokenizer(texts, 400, lowercase=True).get_vocabulary() == vocabulary
    assert tokenizers.train_tokenizer(texts[::-1], 400, lowercase=True).get_vocabulary() == vocabulary


def test_learner_counts_the_words_the_tokenizer_meets():
    # keras-hub's own in-graph pre-tokenisation: uncased strips accents and folds case (ß -> ss),
    # punctuation and CJK characters are words of their own, words over 100 bytes (always [UNK]) go.
    text = "Straße, CAFÉ!  日本 x" + "y" * 120 + " Straße"
    assert tokenizers._word_counts([text], lowercase=True) == {
        "strasse": 2, ",": 1, "cafe": 1, "!": 1, "日": 1, "本": 1,
    }
    assert tokenizers._word_counts([text], lowercase=False) == {
        "Straße": 2, ",": 1, "CAFÉ": 1, "!": 1, "日": 1, "本": 1,
    }


@pytest.mark.parametrize("lowercase", [False, True])
def test_learner_cuts_words_exactly_where_keras_hubs_tokenizer_does(lowercase):
    # keras-hub's WordPieceTokenizer over a vocabulary of exactly the words the learner cut: if
    # both cut alike, each word comes back whole, as one piece (and words over 100 bytes as [UNK]).
    texts = ROUND_TRIP_TEXTS + [
        "tab\tnew\nline\r\x0bcr\x7fdel\u200bzwsp\u00adshy\ufeffbom a\u00a0b\u3000c x\u2028y",
        "¡¿«»‹›‐–—―‖′″‴⁂⁑⸮؟، ¶§†‡•‣※ ^`$+<=>|~ ©®°±µ·×÷ ①②③ ¼½¾ ™ ½",
        "ÀÉÎÕÜ ǅǈǋ ﬁﬂ ẞß İıĲĳ ΣΆΈ ДЖЯ ǰ ŉ Ǆ",  # case folding and decompositions
        "e\u0301 a\u0308 n\u0303 \u0915\u093f \u0e01\u0e34 \u05d0\u05b8",  # combining marks, Devanagari, Thai, Hebrew
        "日本語 中文 한국어 𠀀𪜀𫝀𫠠𬺰 丽 豈",  # CJK blocks, extensions, compatibility; Hangul is not CJK here
        "ж" * 50 + " " + "ж" * 51 + " " + "x" * 100 + " " + "x" * 101,  # 100 / 102 / 100 / 101 bytes
    ]
    words = tokenizers._word_cutter(lowercase)(tf.constant(texts)).numpy()
    words = [[w for w in joined.decode("utf-8").split("\n") if w] for joined in words]
    vocabulary = tokenizers._fill_up(tokenizers.SPECIAL_TOKENS + sorted({w for ws in words for w in ws}), 0)
    reference = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=lowercase, split_on_cjk=True, dtype="string",
        special_tokens=tokenizers.SPECIAL_TOKENS, special_tokens_in_strings=False,
    )
    pieces = tf.function(lambda batch: reference(batch))(tf.constant(texts)).to_list()
    expected = [[w if len(w.encode("utf-8")) <= tokenizers.MAX_BYTES_PER_WORD else "[UNK]" for w in ws] for ws in words]
    assert [[p.decode("utf-8") for p in row] for row in pieces] == expected
    assert expected[-1] == ["ж" * 50, "[UNK]", "x" * 100, "[UNK]"]  # 100 bytes pass, 102 and 101 do not
    assert any(len(row) > 40 for row in words)  # the punctuation line is cut into single marks


def test_fill_up_adds_unused_tokens_not_already_there():
    assert tokenizers._fill_up(["a", "[unused1]"], 5) == ["a", "[unused1]", "[unused0]", "[unused2]", "[unused3]"]
    assert tokenizers._fill_up(["a", "b"], 2) == ["a", "b"]


def test_held_out_code_has_few_unknown_tokens(tokenizer):
    # Learned from 12 modules, applied (in the graph) to modules of the test split: every
    # character of the training text is a piece, so only characters never seen become [UNK].
    # (keras-hub's compute_word_piece_vocabulary, the learner before, left 2.1% [UNK] here.)
    held_out = corpora.text_documents("stdlib", "test", max_documents=8)
    ids = [i for row in _graph_ids(tokenizer, held_out) for i in row]
    assert len(ids) > 10_000
    assert ids.count(tokenizers.UNK_ID) / len(ids) < 0.002


def test_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    calls = []
    real = tokenizers._train_wordpiece

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenizers, "_train_wordpiece", counting)
    texts = ["for item in items: yield item.value"] * 10 + ["while True: break"] * 10
    # An entry of the earlier learner (named without "-hf1") is neither reused nor an error.
    stale = tokenizers._make_tokenizer(tokenizers.SPECIAL_TOKENS + [f"[unused{i}]" for i in range(75)])
    tokenizers.save_tokenizer(stale, str(tmp_path / "tiny-v80-cased"))
    first = tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny")
    assert len(calls) == 1
    assert first.get_vocabulary() != stale.get_vocabulary()
    entry = tmp_path / "tiny-v80-cased-hf1"
    assert sorted(os.listdir(entry)) == ["tokenizer.json", "vocab.txt"]  # no temp files left
    assert json.loads((entry / "tokenizer.json").read_text())["lowercase"] is False

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached vocabulary should have been reused")

    monkeypatch.setattr(tokenizers, "_train_wordpiece", must_not_train)
    second = tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny")
    assert second.get_vocabulary() == first.get_vocabulary()
    # A different size or casing is a different entry, trained afresh.
    monkeypatch.setattr(tokenizers, "_train_wordpiece", counting)
    tokenizers.train_tokenizer(texts, 80, lowercase=True, cache_dir=str(tmp_path), cache_key="tiny")
    assert len(calls) == 2 and (tmp_path / "tiny-v80-uncased-hf1" / "vocab.txt").is_file()
    # A half-written entry (no tokenizer.json) is retrained, not trusted; so is a garbled one.
    (entry / "tokenizer.json").unlink()
    tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny")
    assert len(calls) == 3
    (entry / "tokenizer.json").write_text("{", encoding="utf-8")
    assert tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny").get_vocabulary() == (
        first.get_vocabulary()
    )
    assert len(calls) == 4


STATUS_TEXTS = ["for item in items: yield item.value"] * 10 + ["while True: break"] * 10


def test_training_prints_status_lines(tmp_path, capsys):
    """In the trainer's style (trainers/progress.py): a line when training starts, the same with
    its duration when it ends."""
    texts = STATUS_TEXTS
    tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny")
    lines = capsys.readouterr().err.splitlines()
    phase = "[zoo] training a WordPiece vocabulary (80 tokens, cased) on 0.0 MB of text"
    assert lines[0] == phase + " ..."
    assert re.fullmatch(re.escape(phase) + r" \.\.\. done in \d+\.\d s; cached in .*tiny-v80-cased-hf1", lines[1]), lines
    assert len(lines) == 2
    # A cache hit says where the vocabulary came from, in one line.
    tokenizers.train_tokenizer(texts, 80, cache_dir=str(tmp_path), cache_key="tiny")
    assert capsys.readouterr().err.splitlines() == [
        f"[zoo] loaded the WordPiece vocabulary (80 tokens) from the cache: {tmp_path / 'tiny-v80-cased-hf1'}"
    ]
    tokenizers.train_tokenizer(texts, 60, lowercase=True)  # no cache: nothing about one
    lines = capsys.readouterr().err.splitlines()
    phase = "[zoo] training a WordPiece vocabulary (60 tokens, uncased) on 0.0 MB of text"
    assert lines[0] == phase + " ..."
    assert re.fullmatch(re.escape(phase) + r" \.\.\. done in \d+\.\d s", lines[1]), lines
    tokenizers.train_tokenizer(texts, 300, kind="bpe")
    lines = capsys.readouterr().err.splitlines()
    phase = "[zoo] training a byte-level BPE vocabulary (300 tokens) on 0.0 MB of text"
    assert lines[0] == phase + " ..."
    assert re.fullmatch(re.escape(phase) + r" \.\.\. done in \d+\.\d s", lines[1]), lines


@pytest.mark.parametrize("kind", tokenizers.TOKENIZER_KINDS)
def test_no_progress_bars_into_a_file_or_a_pipe(kind, capfd):
    """stderr not a terminal (here pytest's file): `tokenizers` draws no bars, and none of the
    newlines that end them reaches stdout; only the two status lines are written. (On a
    terminal: test_progress.py.)"""
    tokenizers.train_tokenizer(STATUS_TEXTS, 300 if kind == "bpe" else 60, kind=kind)
    out, err = capfd.readouterr()
    assert out == ""
    for bar in ("Pre-processing sequences", "Tokenize words", "Count pairs", "Compute merges"):
        assert bar not in err
    status = [line for line in err.splitlines() if line.startswith("[zoo]")]
    assert len(status) == 2 and status[0].endswith(" ...") and " ... done in " in status[1], err


def test_status_lines_can_be_turned_off(tmp_path, capsys):
    """The trainer turns them off at verbose 0, trained or loaded from the cache."""
    with tokenizers.status_lines(False):
        tokenizers.train_tokenizer(STATUS_TEXTS, 80, cache_dir=str(tmp_path), cache_key="quiet")
        tokenizers.train_tokenizer(STATUS_TEXTS, 80, cache_dir=str(tmp_path), cache_key="quiet")
    assert capsys.readouterr().err == ""
    tokenizers.train_tokenizer(STATUS_TEXTS, 80, cache_dir=str(tmp_path), cache_key="quiet")  # on again after the block
    assert capsys.readouterr().err.startswith("[zoo] loaded the WordPiece vocabulary (80 tokens)")


@pytest.mark.parametrize("seconds", [0.04, 3.21, 59.94, 125, 3725])
def test_durations_are_written_as_the_trainers_phases_write_them(seconds):
    from trainers.progress import format_duration

    assert tokenizers._duration(seconds) == format_duration(seconds)


def test_save_load_round_trip_gives_identical_ids(tokenizer, tmp_path):
    tokenizers.save_tokenizer(tokenizer, str(tmp_path / "tok"))
    loaded = tokenizers.load_tokenizer(str(tmp_path / "tok"))
    assert loaded.get_vocabulary() == tokenizer.get_vocabulary()
    assert (loaded.lowercase, loaded.strip_accents) == (tokenizer.lowercase, tokenizer.strip_accents)
    for text in ROUND_TRIP_TEXTS:
        assert _ids(loaded, text) == _ids(tokenizer, text), text
    # Inside a graph (the tf.data / SavedModel path), batched, the ids are the same again.
    graph = _graph_ids(loaded, ROUND_TRIP_TEXTS)
    assert graph == _graph_ids(tokenizer, ROUND_TRIP_TEXTS)
    assert graph == [_ids(tokenizer, text) for text in ROUND_TRIP_TEXTS]
    assert 1 in _ids(loaded, "日本語")  # characters never seen in training are [UNK]


def test_load_rejects_a_truncated_vocabulary(tokenizer, tmp_path):
    directory = tmp_path / "tok"
    tokenizers.save_tokenizer(tokenizer, str(directory))
    lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (directory / "vocab.txt").write_text("\n".join(lines[:-10]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt"):
        tokenizers.load_tokenizer(str(directory))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tokenizers.load_tokenizer(str(tmp_path / "empty"))


def test_training_sample_is_capped_and_order_independent():
    texts = [f"line {i}\n" * 50 for i in range(100)]  # 100 texts of 350-400 chars
    sample = tokenizers._training_sample(texts, 5000)
    assert 4000 < sum(map(len, sample)) <= 5000
    assert sample == tokenizers._training_sample(list(reversed(texts)), 5000)
    assert tokenizers._training_sample(texts, None) == texts


def test_arguments_are_checked_and_cache_dir_is_configurable(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="special tokens"):
        tokenizers.train_tokenizer(["abc"], 5)
    with pytest.raises(ValueError, match="cache_key"):
        tokenizers.train_tokenizer(["abc"], 50, cache_dir=str(tmp_path), cache_key="../x")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    assert tokenizers.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("ZOO_CACHE_DIR")
    assert tokenizers.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "zoo")
