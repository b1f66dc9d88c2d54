"""`zoo sweep` (grid -> trade-off table and plot) and `zoo evaluate` with shifts and several sets."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import recipes
from trainers import cli
from trainers.reports import GridError, parse_grid, parse_shots, point_name
from trainers.trainer import evaluate_run

TINY = [
    "--set", "vocabulary_size=300", "--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2",
    "--set", "intermediate_dim=64", "--set", "warmup_steps=0", "--set", "learning_rate=3e-3", "--set", "dropout=0.0",
    "--seq-len", "16", "--batch-size", "16",
]


def test_parse_grid_takes_products_and_keys_varied_together():
    multitask = recipes.get_class("multitask")
    points = parse_grid(multitask, ["mlm_weight:classification_weight=1:0,0.5:1", "learning_rate=1e-3,3e-4"])
    assert points == [
        {"mlm_weight": 1.0, "classification_weight": 0.0, "learning_rate": 1e-3},
        {"mlm_weight": 1.0, "classification_weight": 0.0, "learning_rate": 3e-4},
        {"mlm_weight": 0.5, "classification_weight": 1.0, "learning_rate": 1e-3},
        {"mlm_weight": 0.5, "classification_weight": 1.0, "learning_rate": 3e-4},
    ]
    assert parse_grid(multitask, ["gradient_surgery=none,pcgrad"]) == [{"gradient_surgery": "none"}, {"gradient_surgery": "pcgrad"}]
    assert point_name(points[0]) == "mlm_weight-1.0_classification_weight-0.0_learning_rate-0.001"
    assert len(parse_grid(multitask, multitask.sweep_grid)) == 5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mlm_wieght=0,1", "Valid keys: "),
        ("mlm_weight", "KEY=V1,V2"),
        ("mlm_weight:classification_weight=1:0,1", "has 1 values for 2 keys"),
        ("num_layers=two", "num_layers expects int"),
    ],
)
def test_parse_grid_rejects_bad_specs_clearly(spec, message):
    with pytest.raises(GridError, match=message):
        parse_grid(recipes.get_class("multitask"), [spec])


def test_parse_shots():
    assert parse_shots("8, 32,all") == [8, 32, None]
    for bad in ("", "0", "8,many"):
        with pytest.raises(ValueError, match="--shots"):
            parse_shots(bad)


@pytest.fixture(scope="module")
def sweep(classification_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    status = cli.main([
        "sweep", "multitask", "--data", classification_csv, "--steps", "12", "--out", str(out), "--verbose", "0",
        "--grid", "mlm_weight:classification_weight=1:0,1:1", "--split", "validation", "--no-xla", *TINY,
    ])
    assert status == 0
    return out


def test_sweep_writes_one_run_per_point_and_the_trade_off(sweep, capsys):
    with open(sweep / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["mlm_weight"]), float(r["classification_weight"])) for r in rows] == [(1.0, 0.0), (1.0, 1.0)]
    for row in rows:  # each row is its run's evaluation (classification is deterministic; masking is not)
        metrics = evaluate_run(row["run_dir"], split="validation")
        assert float(row["classification_accuracy"]) == pytest.approx(metrics["classification_accuracy"], abs=1e-6)
        assert 1.0 < float(row["mlm_perplexity"]) < 300
        assert json.load(open(f"{row['run_dir']}/config.json"))["mlm_weight"] == float(row["mlm_weight"])
    table = (sweep / "sweep.md").read_text()
    assert "classification_accuracy against mlm_perplexity" in table and table.count("\n| 1") == 2
    assert json.load(open(sweep / "sweep.json"))["x"] == "mlm_perplexity"
    image = Image.open(sweep / "sweep.png")
    assert image.format == "PNG" and image.size == (640, 420)
    assert len(np.unique(np.asarray(image.convert("L")))) > 2  # something was drawn


def test_evaluate_with_shifts_and_a_second_set_writes_the_report(sweep, classification_csv, tmp_path, capsys):
    run_dir = sweep / "runs" / "mlm_weight-1.0_classification_weight-1.0"
    # The second set: the same texts lower-cased, written as another labelled file.
    with open(classification_csv) as f:
        rows = list(csv.DictReader(f))
    other = tmp_path / "upper.csv"
    with open(other, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"].upper(), "label": r["label"]} for r in rows)
    status = cli.main([
        "evaluate", str(run_dir), "--data", classification_csv, "--data", str(other), "--split", "validation",
        "--shifts", "char_noise=0.3,word_dropout=0.5", "--report-dir", str(tmp_path / "report"),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "mlm_perplexity" in printed and "Classifier under distribution shift" in printed
    report = json.load(open(tmp_path / "report" / "report.json"))
    assert list(report["sets"]) == [classification_csv, str(other), "char_noise_30", "word_dropout_50"]
    reference = report["sets"][classification_csv]
    assert reference["accuracy_gap"] == 0.0
    for name, metrics in report["sets"].items():
        assert metrics["accuracy_gap"] == pytest.approx(reference["accuracy"] - metrics["accuracy"])
        assert sum(map(sum, metrics["confusion"])) == metrics["num_examples"] > 0
        assert set(metrics["per_class"]) == {"animal", "tool"}
    assert {"classification_accuracy", "mlm_perplexity", "mlm_accuracy"} <= set(report["model_metrics"])
    assert report["model_metrics"]["classification_accuracy"] == pytest.approx(reference["accuracy"], abs=1e-6)
    assert Image.open(tmp_path / "report" / "confusion_char_noise_30.png").format == "PNG"
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "report" / "tb"), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    assert "shift/char_noise_30/accuracy_gap" in accumulator.Tags()["tensors"]
