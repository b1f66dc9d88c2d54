"""Shift evaluation, per-class metrics, perplexity per source, few-shot subsets and learning curves, and the writers."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import recipes
from trainers.reports import learning_curve
from zoo import evaluation
from zoo.data import corpora, pipelines
from zoo.data.corpora import LabelledExamples

TINY = dict(
    vocabulary_size=300, sequence_length=16, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
    batch_size=32, warmup_steps=0, learning_rate=3e-3,
)


def test_classification_metrics_match_a_hand_count():
    # true:      0  0  1  1  1  2
    # predicted: 0  1  1  1  0  1   -> class 2 is never predicted
    report = evaluation.classification_metrics([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 1], ["a", "b", "c"])
    assert report["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    assert report["accuracy"] == pytest.approx(3 / 6)
    a, b, c = (report["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert (b["precision"], b["recall"]) == pytest.approx((2 / 4, 2 / 3))
    assert b["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert report["macro_f1"] == pytest.approx((a["f1"] + b["f1"] + 0.0) / 3)
    assert report["macro_precision"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_few_shot_examples_are_deterministic_nested_and_balanced():
    texts = [f"example {i}" for i in range(60)]
    labels = [i % 3 for i in range(60)]
    examples = LabelledExamples(texts, labels, ["x", "y", "z"])
    eight = evaluation.few_shot_examples(examples, 8, seed=1)
    assert eight.texts == evaluation.few_shot_examples(examples, 8, seed=1).texts
    assert eight.texts != evaluation.few_shot_examples(examples, 8, seed=2).texts
    assert np.bincount(eight.labels).tolist() == [8, 8, 8]
    assert all(labels[texts.index(t)] == label for t, label in zip(eight.texts, eight.labels))
    assert set(evaluation.few_shot_examples(examples, 4, seed=1).texts) <= set(eight.texts)  # nested in K
    assert len(evaluation.few_shot_examples(examples, None).texts) == 60
    with pytest.raises(ValueError, match="Class 'x' has 20 examples, fewer than shots_per_class=21"):
        evaluation.few_shot_examples(examples, 21)


@pytest.fixture(scope="module")
def trained_classifier(classification_csv):
    recipe = recipes.get("classifier", data=classification_csv, **TINY)
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train, epochs=3, verbose=0)
    return recipe, model


def test_shift_report_shows_a_non_negative_gap_under_character_noise(trained_classifier, tmp_path):
    recipe, model = trained_classifier
    test = recipe.examples(split="test")
    sets = evaluation.shift_sets(test.texts, test.labels, seed=0)
    assert list(sets) == list(evaluation.SHIFTS)
    assert sets == evaluation.shift_sets(test.texts, test.labels, seed=0)  # deterministic for the seed
    assert sets["char_noise_30"][0] != evaluation.shift_sets(test.texts, test.labels, seed=1)["char_noise_30"][0]

    report = recipe.evaluator(model).score({"in_domain": sets["in_domain"], "char_noise_30": sets["char_noise_30"]})
    in_domain, noisy = report["sets"]["in_domain"], report["sets"]["char_noise_30"]
    print(f"in-domain {in_domain['accuracy']:.3f}, 30% character noise {noisy['accuracy']:.3f}")
    assert report["in_domain"] == "in_domain" and in_domain["accuracy_gap"] == 0.0
    assert in_domain["accuracy"] > 0.95
    assert noisy["accuracy_gap"] == pytest.approx(in_domain["accuracy"] - noisy["accuracy"])
    assert noisy["accuracy_gap"] >= 0.0
    assert np.sum(noisy["confusion"]) == noisy["num_examples"] == len(test.texts)
    # The same numbers as Keras' own evaluation of the clean set.
    (dataset,) = recipe.datasets(splits=("test",))
    assert in_domain["accuracy"] == pytest.approx(model.evaluate(dataset, return_dict=True, verbose=0)["accuracy"], abs=1e-6)

    paths = evaluation.write_report(report, str(tmp_path / "shifts"))
    assert json.load(open(paths["json"])) == json.loads(json.dumps(report))
    markdown = open(paths["markdown"]).read()
    assert "| char_noise_30 |" in markdown and "| animal |" in markdown
    image = Image.open(paths["confusion_char_noise_30"])
    assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    tags = tensorboard_tags(paths["tensorboard"])
    assert {"shift/in_domain/accuracy", "shift/char_noise_30/accuracy_gap", "confusion/char_noise_30"} <= tags


def test_shift_report_covers_every_builtin_shift(trained_classifier):
    recipe, model = trained_classifier
    report = recipe.evaluator(model).evaluate([recipe.config.data], split="test", shifts="", seed=0)
    assert list(report["sets"])[0] == recipe.config.data  # the source itself is the in-domain set
    report["sets"]["in_domain"] = report["sets"].pop(recipe.config.data)
    report["sets"] = {name: report["sets"][name] for name in ["in_domain"] + [n for n in report["sets"] if n != "in_domain"]}
    # Every gloss of this CSV has 8 words: the median split leaves "short" empty, and empty sets are left out.
    assert list(report["sets"]) == [name for name in evaluation.SHIFTS if name != "short"]
    # The tokenizer of this recipe lowercases: case changes are invisible to the model.
    for name in ("upper_case", "lower_case"):
        assert report["sets"][name]["accuracy"] == report["sets"]["in_domain"]["accuracy"]
    assert report["sets"]["long"]["num_examples"] == report["sets"]["in_domain"]["num_examples"]
    assert report["split"] == "test" and report["seed"] == 0


def tensorboard_tags(logdir):
    import tensorflow as tf

    tags = set()
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_evaluate_lm_reports_perplexity_per_source(lm_corpus, tmp_path):
    prose = tmp_path / "prose"
    prose.mkdir()
    # Varied English (one repeated sentence is too easy for byte-level pieces): this project's README.
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    for index in range(6):
        (prose / f"page{index}.txt").write_text(readme[index * 4000 : (index + 1) * 4000])
    recipe = recipes.get("gpt-clm", data=lm_corpus, vocabulary_size=500, sequence_length=32, num_layers=1, hidden_dim=32,
                         num_heads=2, intermediate_dim=64, batch_size=16, warmup_steps=0, learning_rate=3e-3)
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train.take(60), verbose=0)
    report = recipe.evaluator(model).evaluate([lm_corpus, str(prose)], split="train", steps=4)
    code, text = report["sources"][lm_corpus], report["sources"][str(prose)]
    assert report["in_domain"] == lm_corpus and code["perplexity_ratio"] == 1.0
    assert code["perplexity"] == pytest.approx(np.exp(code["loss"]), rel=1e-3)
    print(f"perplexity: code {code['perplexity']:.1f}, unseen prose {text['perplexity']:.1f}")
    assert text["perplexity"] > code["perplexity"]  # a model of Python finds English prose harder
    assert "| " + str(prose) + " |" in evaluation.markdown_report(report)
    # Bits per byte: the loss in bits per token times the split's tokens per byte, for each source.
    for source, metrics in report["sources"].items():
        ratio = recipe.tokens_per_byte(source, "train")
        assert metrics["tokens_per_byte"] == ratio
        assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2) * ratio, rel=1e-12)
        assert 0 < metrics["bits_per_byte"] < 8  # even a barely trained model beats 8 bits per byte
    assert "bits per byte |" in evaluation.markdown_report(report)
    assert f"lm/{lm_corpus}/bits_per_byte" in tensorboard_tags(evaluation.write_tensorboard(report, str(tmp_path / "tb")))
    with pytest.raises(ValueError, match="--shifts corrupts labelled texts"):
        recipe.evaluator(model).evaluate([lm_corpus], shifts="")
    recipe.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer yet"):
        recipe.evaluator(model).evaluate([lm_corpus])


def test_tokens_per_byte_counts_every_token_and_one_end_token_per_document(lm_corpus):
    recipe = recipes.get("gpt-clm", data=lm_corpus, max_documents=5, **{**TINY, "vocabulary_size": 400})
    ratio = recipe.tokens_per_byte(split="train")
    # Independently, in Python: the tokenizer's eager call on each document, + 1 end token each.
    documents = corpora.text_documents(lm_corpus, "train")[:5]
    tokens = sum(len(np.asarray(recipe.tokenizer(document))) + 1 for document in documents)
    num_bytes = sum(len(document.encode("utf-8")) for document in documents)
    assert ratio == tokens / num_bytes
    # Bytes are UTF-8 bytes, not characters; empty documents are left out, as the pipelines leave them out.
    texts = ["naïve café ☃", "", "x = 1\n"]
    expected_tokens = sum(len(np.asarray(recipe.tokenizer(text))) + 1 for text in texts if text)
    counts = pipelines.count_tokens_and_bytes(texts, recipe.preprocessor.document_ids)
    assert counts == (expected_tokens, len("naïve café ☃x = 1\n".encode("utf-8")))
    assert not hasattr(recipes.get("bert-mlm"), "tokens_per_byte")  # a masked LM has no bits per byte


def test_bpe_and_wordpiece_count_the_same_bytes(lm_corpus):
    texts = corpora.text_documents(lm_corpus, "train")[:4] + ["def café(x):\n    return '☃' * x\n"]
    counts = {}
    for kind in ("bpe", "wordpiece"):
        recipe = recipes.get("gpt-clm", data=lm_corpus, tokenizer=kind, **{**TINY, "vocabulary_size": 400})
        recipe.get_tokenizer()
        counts[kind] = pipelines.count_tokens_and_bytes(texts, recipe.preprocessor.document_ids)
    (bpe_tokens, bpe_bytes), (wordpiece_tokens, wordpiece_bytes) = counts["bpe"], counts["wordpiece"]
    assert bpe_bytes == wordpiece_bytes == sum(len(text.encode("utf-8")) for text in texts)  # the text's bytes
    assert bpe_tokens != wordpiece_tokens  # while the tokens differ


def test_learning_curve_rows_are_deterministic(classification_csv, lm_corpus, tmp_path):
    mlm = recipes.get("bert-mlm", data=lm_corpus, **{**TINY, "vocabulary_size": 500})
    (mlm_train,) = mlm.datasets(splits=("train",))
    mlm_model = mlm.build_model()
    mlm_model.fit(mlm_train.take(1), verbose=0)
    mlm.save(mlm_model, str(tmp_path / "mlm"))

    classifier = recipes.get("classifier", data=classification_csv, **TINY)
    everything = len(classifier.examples(split="train"))  # the CSV's distinct training texts
    rows = learning_curve(classifier, shots=(2, None), pretrained=str(tmp_path / "mlm"), steps=2, max_eval_examples=40)
    assert [(r["init"], r["shots_per_class"], r["train_examples"], r["steps"]) for r in rows] == [
        ("scratch", 2, 4, 2), ("scratch", "all", everything, 2), ("pretrained", 2, 4, 2), ("pretrained", "all", everything, 2),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    again = learning_curve(classifier, shots=(2,), steps=2, max_eval_examples=40)
    assert again == rows[:1]
    assert f"| pretrained | all | {everything} |" in evaluation.markdown_report(rows)
    assert "few_shot/pretrained/accuracy" in tensorboard_tags(evaluation.write_tensorboard(rows, str(tmp_path / "tb")))
