"""`zoo export RUN --format savedmodel|ids|hf|onnx`: the formats reach the task's methods, land in
their default directories, never overwrite, and refuse what does not apply in one line."""

import json
import os

import numpy as np
import pytest

import recipes
from tests.zoo.converters.conftest import PROSE
from trainers.cli import main
from trainers.export_commands import export_run
from zoo.data.preprocessing import EncoderPreprocessor

SHAPE = {"num_layers": 1, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32, "sequence_length": 32}


@pytest.fixture(scope="module")
def gpt_run(bpe_tokenizer, tmp_path_factory):
    recipe = recipes.get("gpt-clm", **SHAPE)
    recipe.tokenizer = bpe_tokenizer
    run = tmp_path_factory.mktemp("runs") / "gpt-tiny"
    model = recipe.build_model()
    recipe.save(model, str(run))
    return str(run), model


@pytest.fixture(scope="module")
def classifier_run(uncased_wordpiece, tmp_path_factory):
    recipe = recipes.get("classifier", **SHAPE)
    recipe.tokenizer = uncased_wordpiece
    recipe.label_names = ["animal", "tool"]
    run = tmp_path_factory.mktemp("runs") / "classifier-tiny"
    model = recipe.build_model()
    recipe.save(model, str(run))
    return str(run), model


def test_hf_format_writes_the_layout_in_its_own_model_directory(gpt_run, tmp_path, capsys):
    from zoo.converters.hf_export import import_gpt2

    run, model = gpt_run
    path = export_run(run, export_root=str(tmp_path), format="hf")
    assert path == os.path.join(str(tmp_path), "gpt-tiny-hf", "1")
    assert capsys.readouterr().out.strip().endswith(path)
    decoder, _, _ = import_gpt2(path)
    for expected, actual in zip(model.decoder.get_weights(), decoder.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    metadata = json.loads(open(os.path.join(path, "zoo_metadata.json")).read())
    assert metadata["recipe"] == "gpt-clm" and metadata["config"]["num_layers"] == 1
    assert export_run(run, export_root=str(tmp_path), format="hf").endswith(os.path.join("gpt-tiny-hf", "2"))


def test_classifier_hf_export_carries_the_label_names(classifier_run, tmp_path):
    run, _ = classifier_run
    path = export_run(run, out=str(tmp_path / "clf"), format="hf")
    config = json.loads(open(os.path.join(path, "config.json")).read())
    assert config["id2label"] == {"0": "animal", "1": "tool"}
    assert os.path.isfile(os.path.join(path, "2_Dense", "model.safetensors"))


def test_onnx_format_writes_model_and_tokenizer(classifier_run, uncased_wordpiece, tmp_path):
    import onnxruntime
    import tokenizers

    run, model = classifier_run
    path = export_run(run, export_root=str(tmp_path), format="onnx")
    assert path == os.path.join(str(tmp_path), "classifier-tiny-onnx", "1")
    metadata = json.loads(open(os.path.join(path, "zoo_onnx.json")).read())
    assert metadata["label_names"] == ["animal", "tool"] and metadata["sequence_length"] == 32
    hf = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    hf.enable_truncation(metadata["sequence_length"])  # as the zoo packs: [CLS], the first 30 tokens, [SEP]
    ids = np.array([hf.encode(PROSE[1] + " " + PROSE[0]).ids], "int32")
    packed = EncoderPreprocessor(uncased_wordpiece, 32)([PROSE[1] + " " + PROSE[0]])
    np.testing.assert_array_equal(ids, packed["token_ids"])
    session = onnxruntime.InferenceSession(os.path.join(path, "model.onnx"))
    logits, probabilities = session.run(["logits", "probabilities"], {"token_ids": ids, "padding_mask": np.ones_like(ids)})
    expected = np.asarray(model({"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)}))
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_formats_refuse_what_does_not_apply_in_one_line(gpt_run, tmp_path):
    run, _ = gpt_run
    with pytest.raises(ValueError, match="takes no export option"):
        export_run(run, export_root=str(tmp_path), format="hf", jit_compile=True)
    with pytest.raises(ValueError, match="savedmodel, ids, hf, onnx"):
        export_run(run, export_root=str(tmp_path), format="torchscript")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_run(run, out=str(tmp_path / "taken"), format="onnx")
    assert os.listdir(tmp_path) == ["taken"]


def test_a_task_without_the_layout_says_so_in_one_line(gpt_run, tmp_path, capsys, monkeypatch):
    from recipes.gpt_clm import GPTCausalLMRecipe

    run, _ = gpt_run
    monkeypatch.delattr(GPTCausalLMRecipe, "export_hf")  # back to the Task default
    assert main(["export", run, "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == "zoo export: error: No Hugging Face layout for gpt-clm."


def saved_run(directory, name, tokenizer, **options):
    """A run directory holding a freshly built tiny model of recipe `name` (random weights)."""
    recipe = recipes.get(name, **SHAPE, **options)
    recipe.tokenizer = tokenizer
    if name != "gpt-clm":
        recipe.label_names = ["animal", "tool"]
    recipe.save(recipe.build_model(), str(directory))
    return str(directory)


def export_hf_by_cli(run, out, capsys):
    """`zoo export RUN --format hf --out OUT`: (exit code, stderr lines naming an error, stderr)."""
    code = main(["export", run, "--format", "hf", "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, [line for line in captured.err.splitlines() if "error" in line.lower()], captured.err


@pytest.mark.parametrize("name, options, field", [
    ("gpt-clm", {"use_rotary": True, "position_embedding_type": "none"}, "use_rotary"),
    ("gpt-clm", {"num_key_value_heads": 1}, "num_key_value_heads"),
    ("gpt-clm", {"position_embedding_type": "sinusoidal"}, "position_embedding_type"),
    ("classifier", {"activation": "swiglu"}, "activation"),
])
def test_cli_hf_export_of_an_inexpressible_architecture_is_one_line(request, tmp_path, capsys, name, options, field):
    tokenizer = request.getfixturevalue("bpe_tokenizer" if name == "gpt-clm" else "uncased_wordpiece")
    run = saved_run(tmp_path / "runs" / f"{name}-tiny", name, tokenizer, **options)
    code, errors, stderr = export_hf_by_cli(run, tmp_path / "hf", capsys)
    assert code == 2
    assert errors == [stderr.strip().splitlines()[-1]]  # one line, the last
    layout = "GPT-2 (GPT2LMHeadModel)" if name == "gpt-clm" else "BERT (BertModel)"
    assert errors[0].startswith(f"zoo export: error: Cannot export as {layout}: {field}={options[field]!r} (")
    assert os.listdir(tmp_path) == ["runs"]  # nothing written, not even a temporary directory


def test_multitask_has_no_hf_layout_and_says_so_in_one_line(uncased_wordpiece, tmp_path, capsys):
    run = saved_run(tmp_path / "runs" / "multitask-tiny", "multitask", uncased_wordpiece, num_classes=2)
    code, errors, stderr = export_hf_by_cli(run, tmp_path / "hf", capsys)
    assert code == 2
    assert errors == [stderr.strip().splitlines()[-1]] == ["zoo export: error: No Hugging Face layout for multitask."]
    assert os.listdir(tmp_path) == ["runs"]


def test_the_cli_lists_the_formats(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["export", "run", "--format", "pickle"])
    assert exit.value.code == 2
    assert "choose from savedmodel, ids, hf, onnx" in capsys.readouterr().err.replace("'", "")


def test_ids_format_is_an_ids_only_savedmodel(gpt_run, tmp_path):
    run, _ = gpt_run
    path = export_run(run, export_root=str(tmp_path), format="ids")
    assert path == os.path.join(str(tmp_path), "gpt-tiny-ids", "1")
    metadata = json.loads(open(os.path.join(path, "assets", "zoo_metadata.json")).read())
    assert metadata["ids_only"] is True
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
