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


# -- the plots (matplotlib), without training ----------------------------------------------------


def _decoded(png):
    """The PNG as an RGB array; checks it is a real, non-blank image that matplotlib drew (its
    `savefig` writes a `Software` text chunk naming itself; Pillow and hand-made PNGs do not)."""
    import io

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.text.get("Software", "").startswith("Matplotlib version"), image.text
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # text, lines and fills, not a blank page
    assert (pixels < 128).any() and (pixels > 250).any()  # dark marks on a white background
    return pixels


def test_line_plot_png_has_the_size_asked_for_and_something_drawn():
    from zoo import evaluation

    series = {"scratch": [(8, 0.43, "8"), (32, 0.60, "32"), (512, 0.86, "all")],
              "minilm": [(8, 0.81, "8"), (32, 0.90, ""), (512, 0.94)]}
    for log_x in (False, True):
        pixels = _decoded(evaluation.line_plot_png_bytes(series, "examples per class", "accuracy", "curve", log_x=log_x))
        assert pixels.shape == (420, 640, 3)
    assert _decoded(evaluation.line_plot_png_bytes({"one": [(1.0, 2.0, "")]}, "x", "y", size=(300, 200))).shape == (200, 300, 3)
    with pytest.raises(ValueError, match="x > 0"):
        evaluation.line_plot_png_bytes(series | {"bad": [(0, 1.0)]}, "x", "y", log_x=True)
    with pytest.raises(ValueError, match="at least one point"):
        evaluation.line_plot_png_bytes({"empty": []}, "x", "y")


def test_confusion_png_shades_the_diagonal_blue_and_errors_red():
    from zoo import evaluation

    names = ["animal", "tool", "plant", "a much longer label"]
    confusion = [[50, 3, 0, 1], [4, 40, 6, 0], [0, 2, 48, 0], [30, 0, 1, 9]]
    pixels = _decoded(evaluation.confusion_png_bytes(confusion, names, title="char_noise_30")).astype(int)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 480
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((blue - red > 100) & (blue > 200)).sum() > 1000  # strongly correct cells
    assert ((red - blue > 60) & (red > 200)).sum() > 1000  # the 30 row-3 errors (75% of the row)
    bigger = evaluation.confusion_png_bytes(np.eye(12, dtype=int) * 5, [f"class {i}" for i in range(12)])
    assert _decoded(bigger).shape[1] > pixels.shape[1]  # grows with the number of classes
    with pytest.raises(ValueError, match="shape"):
        evaluation.confusion_png_bytes([[1, 2], [3, 4]], names)


def test_learning_curve_png_and_sweep_png_from_saved_rows(tmp_path):
    from trainers.reports import write_sweep
    from zoo import evaluation

    rows = [{"init": init, "shots_per_class": shots, "train_examples": 4 * (shots if shots != "all" else 400),
             "accuracy": accuracy}
            for init, accuracies in (("scratch", [0.435, 0.603, 0.740, 0.863]), ("minilm", [0.815, 0.9, 0.923, 0.945]))
            for shots, accuracy in zip([8, 32, 128, "all"], accuracies)]
    assert _decoded(evaluation.learning_curve_png_bytes(rows)).shape == (420, 640, 3)
    sweep_rows = [{"mlm_weight": m, "classification_weight": c, "run_dir": "runs/x", "mlm_perplexity": p,
                   "classification_accuracy": a}
                  for m, c, p, a in ((1.0, 0.0, 820.0, 0.26), (1.0, 1.0, 692.0, 0.898), (0.0, 1.0, 8243.0, 0.904))]
    paths = write_sweep(sweep_rows, ["mlm_weight", "classification_weight"], ["mlm_perplexity", "classification_accuracy"],
                        str(tmp_path), "mlm_perplexity", "classification_accuracy", "multitask sweep")
    with open(paths["png"], "rb") as f:
        assert _decoded(f.read()).shape == (420, 640, 3)

