"""The Trainer in process: XLA really on, mixed precision, the run-directory guard."""

import os

import keras
import numpy as np
import pytest

import recipes
from trainers.trainer import Trainer, TrainOptions


def xla_compiled_calls(train_function):
    """Calls in the traced train step that TensorFlow must compile with XLA (`_XlaMustCompile`)."""
    traced = [cell.cell_contents for cell in train_function.__closure__
              if hasattr(cell.cell_contents, "_list_all_concrete_functions")]
    calls = []
    for concrete in (cf for function in traced for cf in function._list_all_concrete_functions()):
        graph = concrete.graph.as_graph_def()
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        calls += [node.name for node in nodes if node.attr["_XlaMustCompile"].b]
    return calls


def tiny_recipe(corpus, **overrides):
    config = dict(
        data=corpus, vocabulary_size=400, sequence_length=32, num_layers=1, hidden_dim=32, num_heads=2,
        intermediate_dim=64, batch_size=8, warmup_steps=0,
    )
    return recipes.get("gpt-clm", **{**config, **overrides})


@pytest.mark.parametrize("jit_compile", [True, False])
def test_xla_is_really_on_by_default_and_off_by_flag(lm_corpus, tmp_path, jit_compile):
    options = TrainOptions(steps_per_epoch=2, validation_steps=1, jit_compile=jit_compile, verbose=0)
    result = Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options).train()
    assert result.model.jit_compile is jit_compile
    assert bool(xla_compiled_calls(result.model.train_function)) is jit_compile


def test_mixed_bfloat16_trains_in_bfloat16_with_float32_weights(lm_corpus, tmp_path):
    options = TrainOptions(steps_per_epoch=3, validation_steps=1, mixed_precision="mixed_bfloat16", verbose=0)
    result = Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options).train()
    decoder = result.model.decoder
    assert decoder.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in decoder.weights)
    assert np.isfinite(result.history["loss"]).all()
    assert keras.config.dtype_policy().name == "float32"  # the trainer restores the global policy


def test_a_run_directory_refuses_another_config(lm_corpus, tmp_path):
    options = TrainOptions(steps_per_epoch=1, validation_steps=1, verbose=0)
    (tmp_path / "run").mkdir()
    Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options)._write_config()
    with pytest.raises(ValueError, match=r"another config \(hidden_dim: 32 -> 64\)\. Only learning_rate"):
        Trainer(tiny_recipe(lm_corpus, hidden_dim=64), str(tmp_path / "run"), options=options).train()


def test_unknown_mixed_precision_policy_lists_the_valid_ones(lm_corpus, tmp_path):
    with pytest.raises(ValueError, match="mixed_bfloat16, mixed_float16"):
        Trainer(tiny_recipe(lm_corpus), str(tmp_path), options=TrainOptions(mixed_precision="fp8"))


def test_model_graph_only_on_request(lm_corpus, tmp_path):
    options = TrainOptions(steps_per_epoch=1, validation_steps=1, jit_compile=False, verbose=0, write_graph=True)
    Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options).train()
    event_files = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "run" / "tb" / "graph") for f in files]
    assert any("tfevents" in path for path in event_files)


def test_a_causal_lm_logs_validation_bits_per_byte(lm_corpus, tmp_path, capsys):
    import json
    import math

    from tensorboard.backend.event_processing import event_accumulator

    recipe = tiny_recipe(lm_corpus)
    options = TrainOptions(epochs=2, steps_per_epoch=2, validation_steps=1, jit_compile=False, verbose=2)
    history = Trainer(recipe, str(tmp_path / "run"), options=options).train().history
    ratio = recipe.tokens_per_byte(lm_corpus, "validation")
    assert 0 < ratio < 1  # fewer tokens than bytes
    assert len(history["val_bits_per_byte"]) == 2 and all(map(math.isfinite, history["val_bits_per_byte"]))
    np.testing.assert_allclose(history["val_bits_per_byte"], [v / math.log(2) * ratio for v in history["val_loss"]],
                               rtol=1e-12)
    assert "val_bits_per_byte:" in capsys.readouterr().out  # the console line of each epoch
    last = json.load(open(tmp_path / "run" / "checkpoints" / "last" / "metrics.json"))
    assert last["val_bits_per_byte"] == pytest.approx(history["val_bits_per_byte"][-1])
    best = json.load(open(tmp_path / "run" / "checkpoints" / "best" / "metrics.json"))
    assert best["val_loss"] == pytest.approx(min(history["val_loss"]))  # val_loss still picks the best
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tb" / "validation"))
    accumulator.Reload()
    assert "eval/bits_per_byte" in accumulator.Tags()["tensors"]


@pytest.mark.parametrize("progress", ["lines", "bar"])
def test_progress_lines_or_bar_and_status_lines(lm_corpus, tmp_path, capsys, progress):
    options = TrainOptions(steps_per_epoch=4, validation_steps=1, jit_compile=False, log_every=2, progress=progress)
    Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options).train()
    out, err = capsys.readouterr()
    if progress == "lines":
        assert [line.split(" - ")[0] for line in out.splitlines()] == ["step 2/4", "step 4/4", "epoch 1/1"]
    else:  # Keras' bar, redrawn in place
        assert "━" in out and "\r" in out and "step 2/4" not in out
    # Without the tokenizer's own lines (within "preparing data"), there when this test is the
    # first to need the tokenizer.
    lines = [line for line in err.splitlines() if not line.startswith(("[zoo] training a ", "[zoo] loaded the "))]
    started = [line[len("[zoo] "):-len(" ...")] for line in lines if line.endswith(" ...")]
    assert started == ["preparing data", "building the model", "first training step (tracing)", "validation",
                       "saving checkpoints/last", "saving checkpoints/best"]
    assert sum(" ... done in " in line for line in lines) == len(started)


def test_verbose_0_prints_no_progress_and_no_status(lm_corpus, tmp_path, capsys):
    options = TrainOptions(steps_per_epoch=2, validation_steps=1, jit_compile=False, log_every=1, verbose=0)
    Trainer(tiny_recipe(lm_corpus), str(tmp_path / "run"), options=options).train()
    out, err = capsys.readouterr()
    assert out == "" and "[zoo]" not in err


def test_unknown_progress_mode_lists_the_valid_ones(lm_corpus, tmp_path):
    with pytest.raises(ValueError, match="auto, bar, lines"):
        Trainer(tiny_recipe(lm_corpus), str(tmp_path), options=TrainOptions(progress="dots"))
