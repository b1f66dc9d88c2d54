"""ONNX exports (zoo.converters.onnx_export) run by onnxruntime: equal to Keras to 1e-5 on
batches of other sizes and lengths than any seen while converting, with the tokenizer files."""

import json
import os

import keras
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="pip install -e .[test] (onnx, tf2onnx, onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="pip install -e .[test] (onnxruntime)")
pytest.importorskip("tf2onnx", reason="pip install -e .[test] (tf2onnx)")

from tests.zoo.converters.conftest import PROSE, randomize, tiny_decoder, tiny_encoder  # noqa: E402
from zoo.converters import onnx_export  # noqa: E402

SHAPES = [(2, 5), (3, 11)]  # batch and length both vary


def run_session(directory, feeds):
    session = ort.InferenceSession(os.path.join(directory, onnx_export.MODEL_FILE))
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds))), session


def numpy_outputs(outputs):
    return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}


def test_gpt_clm_logits_equal_keras(bpe_tokenizer, tmp_path):
    import tokenizers

    model = onnx_export.causal_lm_model(tiny_decoder(bpe_tokenizer.vocabulary_size()))
    directory = onnx_export.export_onnx(model, bpe_tokenizer, tmp_path / "onnx", metadata={"recipe": "gpt-clm"})
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        token_ids = rng.integers(0, bpe_tokenizer.vocabulary_size(), shape).astype("int32")
        outputs, session = run_session(directory, {"token_ids": token_ids})
        expected = numpy_outputs(model({"token_ids": token_ids}))
        np.testing.assert_allclose(outputs["logits"], expected["logits"], atol=1e-5, rtol=0)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("token_ids", ["batch", "length"])]
    # The tokenizer beside the graph gives the zoo's prompt ids.
    hf = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    sep = bpe_tokenizer.token_to_id("[SEP]")
    assert hf.encode(PROSE[0]).ids == [sep] + [int(i) for i in bpe_tokenizer.tokenize(PROSE[0])]
    metadata = json.loads((tmp_path / "onnx" / onnx_export.METADATA_FILE).read_text())
    assert metadata["outputs"] == ["logits"] and metadata["recipe"] == "gpt-clm"
    assert metadata["special_token_ids"]["[SEP]"] == sep


def test_classifier_logits_and_probabilities_equal_keras(uncased_wordpiece, tmp_path):
    from zoo.models import TextClassifier

    classifier = TextClassifier(tiny_encoder(uncased_wordpiece.vocabulary_size()), 3)
    randomize(classifier.head, seed=2)
    model = onnx_export.classifier_model(classifier)
    directory = onnx_export.export_onnx(model, uncased_wordpiece, tmp_path / "onnx")
    graph = onnx.load(os.path.join(directory, onnx_export.MODEL_FILE)).graph
    assert "Erfc" not in {node.op_type for node in graph.node}  # the exact GELU, rewritten as 1 - Erf
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        token_ids = rng.integers(0, uncased_wordpiece.vocabulary_size(), shape).astype("int32")
        padding_mask = np.ones(shape, "int32")
        padding_mask[0, shape[1] // 2:] = 0
        outputs, _ = run_session(directory, {"token_ids": token_ids, "padding_mask": padding_mask})
        expected = numpy_outputs(model({"token_ids": token_ids, "padding_mask": padding_mask}))
        for name in ("logits", "probabilities"):
            np.testing.assert_allclose(outputs[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1.0, atol=1e-6)
    assert os.path.isfile(os.path.join(directory, "vocab.txt"))


def test_masked_lm_logits_equal_keras(cased_wordpiece, tmp_path):
    from zoo.models import MaskedLM

    masked_lm = MaskedLM(tiny_encoder(cased_wordpiece.vocabulary_size()))
    randomize(masked_lm.head, seed=4)
    model = onnx_export.masked_lm_model(masked_lm)
    directory = onnx_export.export_onnx(model, cased_wordpiece, tmp_path / "onnx")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        feeds = {
            "token_ids": rng.integers(0, cased_wordpiece.vocabulary_size(), shape).astype("int32"),
            "padding_mask": np.ones(shape, "int32"),
            "mask_positions": rng.integers(0, shape[1], (shape[0], 3)).astype("int32"),
        }
        outputs, _ = run_session(directory, feeds)
        np.testing.assert_allclose(outputs["logits"], numpy_outputs(model(feeds))["logits"], atol=1e-5, rtol=0)


def test_only_float32_models_and_named_dicts_are_exported(bpe_tokenizer, tmp_path):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size(), dtype="mixed_bfloat16")
    with pytest.raises(ValueError, match="float32"):
        onnx_export.export_onnx(onnx_export.causal_lm_model(decoder), bpe_tokenizer, tmp_path / "a")
    token_ids = keras.Input(shape=(None,), dtype="int32")
    plain = keras.Model(token_ids, tiny_decoder(bpe_tokenizer.vocabulary_size())(token_ids))
    with pytest.raises(ValueError, match="dict of named inputs"):
        onnx_export.export_onnx(plain, bpe_tokenizer, tmp_path / "b")
    assert os.listdir(tmp_path) == []
