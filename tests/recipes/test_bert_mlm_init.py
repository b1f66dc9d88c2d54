"""`bert-mlm` with `init_from`: a Hugging Face `BertForMaskedLM` (encoder and head) against a
numpy forward pass, a `BertModel` without a head, broken heads, and a zoo bert-mlm checkpoint.
The Hugging Face checkpoints are tiny and synthetic (tests/zoo/models/bert_reference.py)."""

import logging

import keras
import numpy as np
import pytest

import recipes
from tests.zoo.models.bert_reference import (
    TINY_CONFIG, VOCABULARY, random_bert_weights, reference_forward, reference_masked_lm_logits, write_checkpoint,
)
from zoo.converters import hf_bert

# Two texts, the second padded; predictions at 3 positions each (the pipelines' last slots
# point at position 0 when unused: so does the second row here).
TOKEN_IDS = np.array([[3, 6, 8, 10, 11, 6, 12, 30, 4, 0], [3, 7, 9, 15, 5, 4, 0, 0, 0, 0]], np.int32)
PADDING_MASK = TOKEN_IDS != 0
MASK_POSITIONS = np.array([[2, 5, 8], [4, 1, 0]], np.int32)


def inputs():
    return {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK, "mask_positions": MASK_POSITIONS}


def logits(model):
    return keras.ops.convert_to_numpy(model(inputs(), training=False))


def weights_of(layer):
    return [keras.ops.convert_to_numpy(variable) for variable in layer.weights]


@pytest.fixture(scope="module")
def weights():
    return random_bert_weights(TINY_CONFIG, seed=1)


@pytest.fixture(scope="module")
def masked_lm_checkpoint(weights, tmp_path_factory):
    """A BertForMaskedLM checkpoint as Hugging Face saves it: `bert.` names and the tied decoder."""
    return write_checkpoint(tmp_path_factory.mktemp("bert_for_masked_lm"), weights, tied_decoder=True)


def test_hugging_face_masked_lm_logits_equal_a_numpy_bert(weights, masked_lm_checkpoint):
    model, tokenizer, info, has_head = hf_bert.load_masked_lm(masked_lm_checkpoint)
    assert has_head and info["mlm_head"]
    assert tokenizer.get_vocabulary() == VOCABULARY
    expected = reference_masked_lm_logits(weights, TINY_CONFIG, TOKEN_IDS, PADDING_MASK, MASK_POSITIONS)
    difference = np.abs(logits(model) - expected).max()
    print(f"max |zoo - numpy reference| = {difference:.2e}")
    np.testing.assert_allclose(logits(model), expected, atol=1e-4, rtol=0)

    # The recipe builds its own model from it: same logits, the checkpoint's tokenizer and shape.
    recipe = recipes.get("bert-mlm", init_from=f"hf:{masked_lm_checkpoint}", sequence_length=16)
    assert recipe.tokenizer.get_vocabulary() == VOCABULARY
    built = recipe.build_model()
    assert built.encoder.hidden_dim == 16 and built.encoder.num_layers == 2 and built.encoder.vocabulary_size == len(VOCABULARY)
    np.testing.assert_allclose(logits(built), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefix, tied_decoder", [("", True), ("bert.", False)])
def test_names_with_and_without_the_bert_prefix_load(weights, masked_lm_checkpoint, tmp_path, prefix, tied_decoder):
    directory = write_checkpoint(tmp_path, weights, prefix=prefix, tied_decoder=tied_decoder)
    model, _, _, has_head = hf_bert.load_masked_lm(directory)
    reference, _, _, _ = hf_bert.load_masked_lm(masked_lm_checkpoint)
    assert has_head
    for mine, theirs in zip(weights_of(model), weights_of(reference)):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("cls.predictions.transform.LayerNorm.weight"),
         r"incomplete masked-LM head: missing tensor\(s\) cls\.predictions\.transform\.LayerNorm\.weight"),
        (lambda t: t.update({"cls.predictions.transform.dense.bias": np.zeros(17, np.float32)}),
         r"cls\.predictions\.transform\.dense\.bias: expected \(16,\), found \(17,\)"),
        (lambda t: t.update({"cls.predictions.decoder.weight": t["embeddings.word_embeddings.weight"] + 1}),
         r"cls\.predictions\.decoder\.weight differs from embeddings\.word_embeddings\.weight"),
        (lambda t: t.update({"cls.predictions.extra": np.zeros(3, np.float32)}), r"no place for: cls\.predictions\.extra"),
    ],
    ids=["missing_layer_norm", "wrong_shape", "untied_decoder", "unknown"],
)
def test_a_broken_head_is_named(weights, tmp_path, change, message):
    tensors = dict(weights)
    change(tensors)
    directory = write_checkpoint(tmp_path, tensors)
    with pytest.raises(ValueError, match=message):
        hf_bert.load_masked_lm(directory)


def test_a_checkpoint_without_a_head_loads_the_encoder_and_a_fresh_head(tmp_path, caplog):
    weights = random_bert_weights({**TINY_CONFIG, "architectures": ["BertModel"]}, seed=2, head=False)
    weights["pooler.dense.weight"] = np.zeros((16, 16), np.float32)  # BertModel's pooler: ignored
    weights["pooler.dense.bias"] = np.zeros(16, np.float32)
    directory = write_checkpoint(tmp_path, weights, prefix="")
    model, _, info, has_head = hf_bert.load_masked_lm(directory)
    assert not has_head and not info["mlm_head"]
    hidden = keras.ops.convert_to_numpy(model.encoder(TOKEN_IDS, padding_mask=PADDING_MASK))
    np.testing.assert_allclose(hidden, reference_forward(weights, TINY_CONFIG, TOKEN_IDS, PADDING_MASK), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.head.output_bias), 0.0)  # as initialised

    with caplog.at_level(logging.WARNING, logger="recipes.pretrained"):
        recipe = recipes.get("bert-mlm", init_from=f"hf:{directory}", sequence_length=24)
    assert "has no masked-LM head" in caplog.text and "starts from random weights" in caplog.text
    built = recipe.build_model()
    for mine, theirs in zip(weights_of(built.encoder), weights_of(model.encoder)):
        np.testing.assert_array_equal(mine, theirs)

    with pytest.raises(ValueError, match=r"sequence_length 25 exceeds the 24 positions"):
        recipes.get("bert-mlm", init_from=f"hf:{directory}", sequence_length=25)
    with pytest.raises(FileNotFoundError, match=r"use init_from='hf:"):
        recipes.get("bert-mlm", init_from=directory)  # a Hugging Face directory without "hf:"
    # The classifier shares the loader: the encoder, no head.
    classifier = recipes.get("classifier", init_from=f"hf:{directory}", sequence_length=16, num_classes=2)
    for mine, theirs in zip(weights_of(classifier.build_model().encoder), weights_of(model.encoder)):
        np.testing.assert_array_equal(mine, theirs)


def test_init_from_a_zoo_bert_mlm_checkpoint_reproduces_it(masked_lm_checkpoint, tmp_path):
    recipe = recipes.get("bert-mlm", preset="tiny", sequence_length=32)
    recipe.tokenizer = hf_bert.load_tokenizer(masked_lm_checkpoint)  # no tokenizer training
    model = recipe.build_model()
    rng = np.random.default_rng(3)  # not the seeded initialisation a rebuilt model would repeat
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.1 for w in model.get_weights()])
    recipe.save(model, tmp_path / "mlm")

    restored = recipes.get("bert-mlm", preset="tiny", sequence_length=32, init_from=str(tmp_path / "mlm"))
    assert restored.tokenizer.get_vocabulary() == VOCABULARY
    np.testing.assert_allclose(logits(restored.build_model()), logits(model), atol=1e-5, rtol=0)
    # A shorter sequence_length fits in the checkpoint's positions.
    shorter = recipes.get("bert-mlm", preset="tiny", sequence_length=16, init_from=str(tmp_path / "mlm"))
    np.testing.assert_allclose(logits(shorter.build_model()), logits(model), atol=1e-5, rtol=0)

    mismatch = r"this bert-mlm's shape \(num_layers: checkpoint 2, config 4; hidden_dim: checkpoint 128, config 256"
    with pytest.raises(ValueError, match=mismatch):
        recipes.get("bert-mlm", preset="mini", sequence_length=32, init_from=str(tmp_path / "mlm"))
    with pytest.raises(ValueError, match=r"sequence_length: checkpoint 32 positions, config 64"):
        recipes.get("bert-mlm", preset="tiny", sequence_length=64, init_from=str(tmp_path / "mlm"))
    with pytest.raises(FileNotFoundError, match="No model.keras"):
        recipes.get("bert-mlm", init_from=str(tmp_path))
