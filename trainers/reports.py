"""What `zoo evaluate` (several sets, shifts), `zoo sweep` and `zoo learning-curve` compute and write.

- `evaluation_report(run_dir, data, ...)`: a run evaluated by its task's evaluator: a
  classification run scored on several labelled sources and on shifted copies of the first,
  with per-class metrics, confusion matrices and gaps; a language model's perplexity on several
  corpora. `write_task_report` writes it, as markdown in the task's own words (`Task.report`).
- `parse_grid` / `run_sweep`: one training run per point of a config grid, each evaluated,
  written as a trade-off table (markdown, CSV, JSON) and plot (PNG).
- `learning_curve` / `run_learning_curve`: test accuracy against K examples per class, from
  scratch and from a pretrained encoder, written the same way.
"""

import csv
import dataclasses
import itertools
import json
import os

import yaml

from zoo import evaluation


class GridError(ValueError):
    """A bad `--grid` specification (the message says what and lists valid keys)."""


# -- evaluate ----------------------------------------------------------------------------------


def evaluation_report(run_dir, data=(), split="test", shifts=None, steps=0, seed=0, max_examples=0, loaded=None):
    """A report (see `zoo.evaluation`) of a run on several sources, and on shifted copies of the first.

    The run's task evaluates (`recipe.evaluator(model).evaluate(...)`): a classification task
    scores labelled sources and their shifted copies, a language-model task its corpora.

    Args:
        run_dir: a run directory (its best, else last, checkpoint is used).
        data: sources to evaluate on; the first is the in-domain reference. Default: the run's own.
        shifts: None for no shifted copies, else a `zoo.evaluation.parse_shifts` spec ("" or
            "all" for the standard ones). Classification tasks only.
        steps: language models: at most this many batches per source (0: all).
        max_examples: classification: at most this many examples per source (0: all).
        loaded: `(model, recipe)` if already loaded with `trainers.trainer.load_run`.

    Returns:
        The report dict; classification reports also hold `model_metrics`, the recipe's own
        metrics (for `multitask`, per task) on the in-domain source, from `model.evaluate`.
    """
    from trainers.trainer import evaluate_run, load_run

    model, recipe = loaded or load_run(run_dir)
    sources = list(data) or [recipe.config.data]
    report = recipe.evaluator(model).evaluate(
        sources, split=split, shifts=shifts, seed=seed, max_examples=max_examples, steps=steps
    )
    if recipe.kind == "classification":
        metrics = evaluate_run(run_dir, data=sources[0], split=split, loaded=(model, recipe))
        report["model_metrics"] = {key: float(value) for key, value in metrics.items()}
    report.update(run_dir=os.path.abspath(run_dir), recipe=recipe.name, split=split)
    return report


def write_task_report(task, report, directory):
    """`zoo.evaluation.write_report` (report.json, report.md, PNGs, tb/), with report.md the task's
    own markdown (`task.report(report)`, what the command prints); returns the paths."""
    return evaluation.write_report(report, directory, markdown=task.report(report))


# -- sweep -------------------------------------------------------------------------------------


def parse_grid(recipe_class, specs):
    """`["lr=1e-3,3e-4", "mlm_weight:classification_weight=1:0,1:1"]` -> the list of grid points.

    Each spec is `KEY=V1,V2,...` (one axis) or `K1:K2=A1:B1,A2:B2,...` (keys varied together,
    one point per tuple). Axes combine as a cartesian product. Values are YAML scalars, checked
    against the config's field types; unknown keys raise a GridError listing the valid ones.
    """
    from trainers.config_values import UsageError, coerce

    fields = {f.name for f in dataclasses.fields(recipe_class.config_class)}
    axes = []
    for spec in specs:
        keys_text, sep, values_text = spec.partition("=")
        keys = [key.strip() for key in keys_text.split(":")]
        if not sep or not all(keys) or not values_text.strip():
            raise GridError(f"--grid expects KEY=V1,V2,... or K1:K2=A1:B1,A2:B2,..., got {spec!r}.")
        for key in keys:
            if key not in fields:
                raise GridError(f"Unknown config key {key!r} in --grid {spec!r}. Valid keys: {', '.join(sorted(fields))}.")
        axis = []
        for item in values_text.split(","):
            raws = [raw.strip() for raw in item.split(":")] if len(keys) > 1 else [item.strip()]
            if len(raws) != len(keys):
                raise GridError(f"--grid {spec!r}: {item!r} has {len(raws)} values for {len(keys)} keys ({':'.join(keys)}).")
            try:
                axis.append({key: coerce(recipe_class, key, yaml.safe_load(raw), raw) for key, raw in zip(keys, raws)})
            except UsageError as error:
                raise GridError(f"--grid {spec!r}: {error}") from None
        axes.append(axis)
    points = [dict(itertools.chain.from_iterable(part.items() for part in combination)) for combination in itertools.product(*axes)]
    if not points:
        raise GridError("--grid gave no points.")
    return points


def point_name(point):
    """A directory-safe name of a grid point: `mlm_weight-1_classification_weight-0.25`."""
    return "_".join(f"{key}-{value}" for key, value in point.items()).replace("/", "-").replace(" ", "")


def _default_metric(metrics, candidates):
    return next((name for name in candidates if name in metrics), sorted(metrics)[0])


def run_sweep(
    recipe_name, points, out, preset=None, data=None, overrides=None, options=None, strategy=None, split="test",
    x=None, y=None, eval_steps=0,
):
    """Trains one run per grid point under `out/runs/<point>/`, evaluates each, writes the trade-off.

    A run directory that already holds a finished run resumes (and so finishes at once): an
    interrupted sweep continues where it stopped when re-run.

    Args:
        points: dicts of config overrides (`parse_grid`), applied on top of `overrides`.
        options: `trainers.trainer.TrainOptions` for every run; strategy: its strategy object.
        x, y: the metrics to plot against each other; defaults: the recipe's `sweep_axes`, else
            the first grid key and the first of accuracy / perplexity / loss measured.

    Returns:
        `(rows, paths)`: per point `{**point, "run_dir", **metrics}` and the files written
        (`sweep.md`, `sweep.csv`, `sweep.json`, `sweep.png`).
    """
    import recipes
    from trainers.trainer import Trainer, evaluate_run

    recipe_class = recipes.get_class(recipe_name)
    rows = []
    for point in points:
        recipe = recipes.get(recipe_name, preset=preset, **{**(overrides or {}), **point})
        run_dir = os.path.join(out, "runs", point_name(point))
        Trainer(recipe, run_dir, data=data, options=options, strategy=strategy).train()
        metrics = evaluate_run(run_dir, data=data, split=split, steps=eval_steps)
        rows.append({**point, "run_dir": run_dir, **{key: float(value) for key, value in metrics.items()}})
    default_x, default_y = getattr(recipe_class, "sweep_axes", (None, None))
    metric_names = [key for key in rows[0] if key not in points[0] and key != "run_dir"]
    x = x or default_x or next(iter(points[0]))
    y = y or default_y or _default_metric(metric_names, ("classification_accuracy", "accuracy", "perplexity", "loss"))
    for axis in (x, y):
        if axis not in rows[0]:
            raise ValueError(f"No {axis!r} to plot. Measured: {', '.join(metric_names)}; grid keys: {', '.join(points[0])}.")
    return rows, write_sweep(rows, list(points[0]), metric_names, out, x, y, f"{recipe_name} sweep ({split} split)")


def write_sweep(rows, keys, metric_names, out, x, y, title):
    os.makedirs(out, exist_ok=True)
    columns = keys + metric_names
    paths = {name: os.path.join(out, f"sweep.{name}") for name in ("md", "csv", "json", "png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["run_dir"])
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["json"], "w") as f:
        json.dump({"x": x, "y": y, "rows": rows}, f, indent=2)
        f.write("\n")
    lines = [f"{title}: {y} against {x}", "", "| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    # Each point is labelled with its grid values (`1 : 0.25`); the title names the keys.
    label_keys = [key for key in keys if key != x]
    labels = [" : ".join(f"{row[key]:g}" if isinstance(row[key], (int, float)) else str(row[key]) for key in label_keys)
              for row in rows]
    if label_keys:
        title = f"{title}\npoints: {' : '.join(label_keys)}"
    series = {"grid points": [(row[x], row[y], label) for row, label in zip(rows, labels)]}
    # Perplexities (or anything positive spanning over a decade) read better on a log axis.
    xs = [row[x] for row in rows]
    log_x = min(xs) > 0 and ("perplexity" in x or max(xs) / min(xs) > 10)
    with open(paths["png"], "wb") as f:
        f.write(evaluation.line_plot_png_bytes(series, x, y, title, log_x=log_x))
    return paths


# -- learning curve ----------------------------------------------------------------------------


def parse_shots(text):
    """`"8,32,128,all"` -> [8, 32, 128, None]."""
    shots = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "all":
            shots.append(None)
        elif item.isdigit() and int(item) > 0:
            shots.append(int(item))
        else:
            raise ValueError(f"--shots expects positive integers or 'all', comma-separated; got {item!r}.")
    if not shots:
        raise ValueError("--shots is empty.")
    return shots


def learning_curve(
    recipe,
    shots=(8, 32, 128, None),
    pretrained=None,
    source=None,
    steps=300,
    batch_size=None,
    split="test",
    seed=None,
    max_eval_examples=0,
    jit_compile="auto",
    pretrained_overrides=None,
):
    """Test accuracy after training on K examples per class, from scratch and from a pretrained encoder.

    Every run trains `steps` optimiser steps (the same budget for every K: a small K is
    repeated for many epochs) on `few_shot_examples(train split, K, seed)`, from the same
    seed, then is scored on `split`. "scratch" uses `recipe` as it is, without `init_from`
    (its tokenizer is trained on the whole training split's text, labels unused);
    "pretrained" uses the same config with `init_from=pretrained` (that checkpoint's
    encoder and tokenizer; the config's shape must match it).

    Args:
        recipe: a `classifier` recipe (any recipe with `examples()` and an `init_from` field).
        shots: the K values; None means all training examples.
        pretrained: a bert-mlm checkpoint; None gives only the "scratch" rows.
        pretrained_overrides: config fields for the "pretrained" runs only, e.g.
            {"learning_rate": 5e-5}: fine-tuning wants a smaller step than training from scratch.
        max_eval_examples: score on the first N examples of `split` only (0: all).

    Returns:
        A list of rows {"init", "shots_per_class" (an int or "all"), "train_examples", "steps",
        "accuracy", "macro_f1"}: for each init, one per K, in the order given.
    """
    seed = recipe.config.seed if seed is None else seed
    base = dataclasses.replace(recipe.config, seed=seed, init_from="")
    inits = [("scratch", base)]
    if pretrained:
        inits.append(("pretrained", dataclasses.replace(base, init_from=str(pretrained), **(pretrained_overrides or {}))))
    rows = []
    for init, config in inits:
        held_out = type(recipe)(config).examples(source, split)
        eval_texts, eval_labels = held_out.texts, held_out.labels
        if max_eval_examples:
            eval_texts, eval_labels = eval_texts[:max_eval_examples], eval_labels[:max_eval_examples]
        for k in shots:
            # The recipe's own pipeline with `shots_per_class=K`: what `zoo train --shots-per-class K` trains on.
            run = type(recipe)(dataclasses.replace(config, shots_per_class=int(k or 0)))
            (dataset,) = run.datasets(source, batch_size=batch_size, splits=("train",), repeat=True)
            train_examples = len(evaluation.few_shot_examples(run.examples(source, "train"), k, seed))
            model = run.build_model(total_steps=steps, jit_compile=jit_compile)
            model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)  # the pipeline shuffles
            evaluator = run.evaluator(model)
            if batch_size:
                evaluator.batch_size = batch_size
            scores = evaluator.score({split: (eval_texts, eval_labels)})["sets"][split]
            rows.append({
                "init": init,
                "shots_per_class": int(k) if k else "all",
                "train_examples": train_examples,
                "steps": int(steps),
                "accuracy": scores["accuracy"],
                "macro_f1": scores["macro_f1"],
            })
    return rows


def run_learning_curve(
    recipe, out, shots, pretrained=None, source=None, steps=300, max_eval_examples=0, jit_compile=True,
    pretrained_overrides=None,
):
    """`learning_curve`, written to `out` (report.json/md, learning_curve.png, tb/)."""
    rows = learning_curve(
        recipe, shots=shots, pretrained=pretrained, source=source, steps=steps,
        max_eval_examples=max_eval_examples, jit_compile=jit_compile, pretrained_overrides=pretrained_overrides,
    )
    paths = write_task_report(recipe, rows, out)
    paths["png"] = os.path.join(out, "learning_curve.png")
    with open(paths["png"], "wb") as f:
        f.write(evaluation.learning_curve_png_bytes(rows))
    return rows, paths
