"""The `zoo` command end to end: train -> evaluate -> export -> generate, and bad arguments."""

import json
import math
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

TINY = [
    "--set", "vocabulary_size=400", "--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2",
    "--set", "intermediate_dim=64", "--set", "validation_steps=2", "--seq-len", "32", "--batch-size", "8",
]


def zoo(*args, timeout=300):
    command = [sys.executable, "-c", "import sys; from trainers.cli import main; sys.exit(main())", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def tags(directory):
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return set(accumulator.Tags()[event_accumulator.TENSORS])


@pytest.fixture(scope="module")
def trained_run(lm_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = zoo("train", "gpt-clm", "--data", lm_corpus, "--steps", "6", "--run-dir", run_dir, "--log-every", "2",
                 "--verbose", "0", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_train_writes_the_run_directory_and_is_quiet(trained_run, lm_corpus):
    run_dir, result = trained_run
    assert "Final metrics" in result.stdout and "Sample ('def '" in result.stdout
    for noise in ("cuda drivers", "cuInit", "absl::InitializeLog", "Traceback"):
        assert noise not in result.stderr
    config = json.load(open(run_dir / "config.json"))
    assert config["recipe"] == "gpt-clm" and config["hidden_dim"] == 32 and config["sequence_length"] == 32
    assert config["data"] == str(lm_corpus)  # the source is part of the resolved config: evaluate reads it
    for path in ("tokenizer/tokenizer.json", "checkpoints/last/model.keras", "checkpoints/best/model.keras",
                 "backup/worker-0/backup.json"):
        assert os.path.exists(run_dir / path), path


def test_tensorboard_has_the_scalars_and_text_samples(trained_run):
    run_dir, _ = trained_run
    train_tags = tags(run_dir / "tb" / "train")
    assert {"train/loss", "train/accuracy", "train/perplexity", "train/learning_rate", "train/grad_norm",
            "train/clip_rate", "system/tokens_per_sec", "system/examples_per_sec", "samples"} <= train_tags
    assert {"eval/loss", "eval/accuracy", "eval/perplexity", "eval/bits_per_byte"} <= tags(run_dir / "tb" / "validation")
    assert not (run_dir / "tb" / "graph").exists()  # the model graph is off by default


def test_evaluate_export_and_generate(trained_run):
    run_dir, _ = trained_run
    evaluated = zoo("evaluate", run_dir, "--steps", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout[: evaluated.stdout.index("}") + 1])
    assert {"loss", "accuracy", "perplexity"} <= set(metrics)

    export_dir = run_dir.parent / "export" / "1"
    exported = zoo("export", run_dir, "--out", export_dir, "--xla")  # generate compiled with XLA in the SavedModel
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert os.path.exists(export_dir / "saved_model.pb")
    assert json.loads((export_dir / "assets" / "zoo_metadata.json").read_text())["export_options"]["jit_compile"] is True
    generated = zoo("generate", export_dir, "def ", "--max-new-tokens", "5")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.startswith("def ")
    # No TensorFlow or Keras noise: CUDA probes, oneDNN notes, Keras' "ran out of data".
    noise = ("ran out of data", "cuInit", "cuda drivers", "oneDNN", "absl::InitializeLog", "Traceback")
    for result in (evaluated, exported):
        assert not [line for line in noise if line in result.stderr], result.stderr


def test_evaluate_a_language_model_on_two_corpora(trained_run, lm_corpus, tmp_path):
    run_dir, _ = trained_run
    prose = tmp_path / "prose"
    prose.mkdir()
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    for index in range(60):  # files are split 90/5/5 by a hash of their name: enough for a test split
        (prose / f"part{index}.txt").write_text(readme[index * 300 :] + readme[: index * 300])
    single = zoo("evaluate", run_dir, "--steps", "2")
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads(single.stdout[: single.stdout.index("}") + 1])
    result = zoo("evaluate", run_dir, "--data", lm_corpus, "--data", prose, "--steps", "2", "--report-dir", tmp_path / "r")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(tmp_path / "r" / "report.json"))
    assert report["kind"] == "language_model" and list(report["sources"]) == [lm_corpus, str(prose)]
    in_domain = report["sources"][lm_corpus]
    assert in_domain["perplexity_ratio"] == 1.0
    assert in_domain["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-5)  # same batches, same numbers
    other = report["sources"][str(prose)]
    assert other["perplexity_ratio"] == pytest.approx(other["perplexity"] / in_domain["perplexity"])
    assert "| source | perplexity |" in result.stdout
    assert {f"lm/{lm_corpus}/perplexity"} <= tags(tmp_path / "r" / "tb")
    # gpt-clm: bits per byte, per source and alone, from the same loss and the split's tokens per byte.
    assert in_domain["bits_per_byte"] == pytest.approx(alone["bits_per_byte"], rel=1e-5)
    assert other["bits_per_byte"] == pytest.approx(other["loss"] / math.log(2) * other["tokens_per_byte"])
    assert " bits per byte |" in result.stdout and f"lm/{prose}/bits_per_byte" in tags(tmp_path / "r" / "tb")
    shifted = zoo("evaluate", run_dir, "--shifts")
    assert shifted.returncode == 2 and "--data stdlib --data python-docs" in shifted.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "gpt-cml"], "Registered recipes: bert-mlm, classifier, distill, gpt-clm, multitask"),
        (["train", "gpt-clm", "--set", "hiden_dim=3"], "Valid keys:"),
        (["train", "gpt-clm", "--set", "num_layers=two"], "num_layers expects int"),
        (["train", "gpt-clm", "--preset", "huge"], "Valid presets: small, tiny"),
        (["train", "gpt-clm", "--data", "/no/such/corpus"], "/no/such/corpus"),
        (["train", "classifier", "--data", "nope"], "nope"),
        (["evaluate", "/no/such/run"], "does not exist"),
        (["sweep", "multitask", "--grid", "mlm_wieght=0,1"], "Valid keys:"),
        (["sweep", "classifier"], "no default grid"),
        (["learning-curve", "--shots", "8,few"], "--shots expects"),
        (["learning-curve", "--pretrained-set", "learning_rate=5e-5"], "give --pretrained too"),
        (["learning-curve", "--pretrained", "minilm", "--pretrained-set", "learning_rat=5e-5"], "Valid keys:"),
        (["train", "classifier", "--set", "shift=3"], "Valid keys:"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(args, message, tmp_path):
    result = zoo(*args, "--run-dir", tmp_path / "run") if args[0] == "train" else zoo(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_strategy_choices_match_the_factory():
    from trainers.cli import STRATEGY_CHOICES
    from trainers.strategy import STRATEGY_NAMES

    assert STRATEGY_CHOICES == STRATEGY_NAMES
