"""Remedies for shifted data: clean and shifted accuracy of a classifier trained with each one.

For every remedy (a set of `--set` overrides of the `classifier` recipe) and seed, trains with
the `zoo` command (`zoo train classifier --steps N --set seed=S ...`), then scores the best
checkpoint on the clean split and the default shifted copies (`zoo evaluate RUN --shifts
--split SPLIT`). Reports per remedy the mean and spread (min-max) over seeds of every set's
accuracy and gap, and the training time per step relative to plain training (from the
trainer's log: the elapsed time between step 100 and the last step, so tracing and XLA
compilation are left out). Runs are kept in --runs-dir and reused (delete one to redo it).

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/remedies.py                        # tiny from scratch, 600 steps, 3 seeds
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/remedies.py --seeds 0 --split validation --remedies plain,fgm-1  # tuning
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/remedies.py --model minilm --remedies plain,augment
    .venv/bin/python bench/remedies.py --plot-only                                   # redraw from remedies-<model>-<split>.json
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/remedies.py --pipeline --remedies plain,augment  # input pipeline alone, ms/batch
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/remedies.py --timing               # step time per remedy, interleaved

Writes `bench/results/remedies/remedies-<model>-<split>.{json,md,png}` (`--out`).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
ZOO = os.path.join(REPO_ROOT, ".venv", "bin", "zoo")

# Each model: the training command's arguments before the remedy's own --set overrides.
MODELS = {
    "tiny": ["--steps", "600"],  # the README's scratch run (tiny preset, learning rate 1e-3)
    "minilm": ["--init-from", "minilm", "--steps", "200", "--set", "learning_rate=5e-5"],  # the README's teacher
}

# The same models as recipe overrides, for the in-process timing (`--timing`).
MODEL_CONFIGS = {"tiny": [], "minilm": ["init_from=minilm", "learning_rate=5e-5"]}

# name: --set overrides, or `--flag=value` arguments of `zoo train` (a later `--steps` wins over
# the model's). Tuned on seed 0's validation split (see the report).
REMEDIES = {
    "plain": [],
    "augment": ["augment=char_noise=0.1", "augment_probability=0.5"],
    "augment-c20": ["augment=char_noise=0.2", "augment_probability=0.5"],
    "augment-c10-p100": ["augment=char_noise=0.1"],
    "augment-c05-p100": ["augment=char_noise=0.05"],
    "fgm": ["adversarial=fgm", "adversarial_epsilon=0.1"],
    "fgm-0.3": ["adversarial=fgm", "adversarial_epsilon=0.3"],
    "fgm-1": ["adversarial=fgm", "adversarial_epsilon=1.0"],
    "pgd": ["adversarial=pgd", "adversarial_epsilon=0.1", "adversarial_steps=3"],
    "pgd-0.3": ["adversarial=pgd", "adversarial_epsilon=0.3", "adversarial_steps=3"],
    "rdrop": ["consistency=rdrop", "consistency_weight=1.0"],
    "consistency-augment": ["augment=char_noise=0.1", "consistency=augment", "consistency_weight=1.0"],
    "augment+fgm": ["augment=char_noise=0.1", "augment_probability=0.5", "adversarial=fgm", "adversarial_epsilon=0.1"],
    "augment+fgm-0.3": ["augment=char_noise=0.1", "augment_probability=0.5", "adversarial=fgm", "adversarial_epsilon=0.3"],
    # MiniLM candidates: more steps, or a higher learning rate, to learn the corrupted spellings.
    "plain-400": ["--steps=400"],
    "consistency-augment-400": ["augment=char_noise=0.1", "consistency=augment", "consistency_weight=1.0", "--steps=400"],
    "consistency-augment-lr1e-4": ["augment=char_noise=0.1", "consistency=augment", "consistency_weight=1.0",
                                   "learning_rate=1e-4"],
    # Second round at learning rate 1e-4: the classification loss on corrupted texts, stronger
    # typos in training, or a stronger pull towards the clean prediction.
    "augment-lr1e-4": ["augment=char_noise=0.1", "augment_probability=0.5", "learning_rate=1e-4"],
    "consistency-augment-c20-lr1e-4": ["augment=char_noise=0.2", "consistency=augment", "consistency_weight=1.0",
                                       "learning_rate=1e-4"],
    "consistency-augment-w3-lr1e-4": ["augment=char_noise=0.1", "consistency=augment", "consistency_weight=3.0",
                                      "learning_rate=1e-4"],
}


def remedy_overrides(name):
    """`name`'s `--set` assignments (without its `zoo train` flags)."""
    return [value for value in REMEDIES[name] if not value.startswith("--")]


def remedy_arguments(name, seed):
    """`zoo train` arguments for `name` and `seed`: its flags, then `--set` for each assignment."""
    flags = [value for value in REMEDIES[name] if value.startswith("--")]
    return flags + [item for value in remedy_overrides(name) + [f"seed={seed}"] for item in ("--set", value)]


def log(message):
    print(message, file=sys.stderr, flush=True)


def seconds_per_step(log_text):
    """(last step - step 100) / elapsed time between them, from the trainer's progress lines."""
    points = []
    for match in re.finditer(r"step (\d+)/(\d+) .*?elapsed: ([\d:]+)", log_text):
        parts = [int(p) for p in match.group(3).split(":")]
        seconds = sum(value * 60**power for power, value in enumerate(reversed(parts)))
        points.append((int(match.group(1)), seconds))
    points = [p for p in points if p[0] >= 100]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    (first_step, first_time), (last_step, last_time) = points[0], points[-1]
    return (last_time - first_time) / (last_step - first_step)


def run(command, log_path):
    log(" ".join(command))
    with open(log_path, "w") as f:
        process = subprocess.run(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if process.returncode:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}; see {log_path}")
    with open(log_path) as f:
        return f.read()


def train_and_evaluate(model, name, seed, split, runs_dir):
    run_dir = os.path.join(runs_dir, f"{model}-{name}-s{seed}")
    train_log = run_dir + ".train.log"
    if not os.path.exists(os.path.join(run_dir, "checkpoints", "last", "model.keras")):
        start = time.time()
        run([ZOO, "train", "classifier", *MODELS[model], *remedy_arguments(name, seed), "--run-dir", run_dir], train_log)
        log(f"  trained in {time.time() - start:.0f} s")
    report_dir = os.path.join(run_dir, "evaluation", split)
    report_path = os.path.join(report_dir, "report.json")
    if not os.path.exists(report_path):
        run([ZOO, "evaluate", run_dir, "--shifts", "--split", split, "--report-dir", report_dir], run_dir + f".evaluate-{split}.log")
    with open(report_path) as f:
        report = json.load(f)
    with open(train_log) as f:
        step_time = seconds_per_step(f.read())
    return {
        "accuracy": {set_name: metrics["accuracy"] for set_name, metrics in report["sets"].items()},
        "seconds_per_step": step_time,
        "run_dir": run_dir,
    }


def pipeline_milliseconds(name, batches=300, warmup=50):
    """Milliseconds per batch of the classifier's training pipeline alone (raw text to ids) with `name`'s settings."""
    sys.path.insert(0, REPO_ROOT)
    import recipes
    from trainers.config_values import parse_overrides

    recipe_class = type(recipes.get("classifier"))
    recipe = recipes.get("classifier", **parse_overrides(recipe_class, assignments=remedy_overrides(name)))
    (train,) = recipe.datasets(splits=("train",), repeat=True)
    iterator = iter(train)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches * 1000


def step_times(model, names, rounds, steps_per_round):
    """Seconds per training step of each remedy, timed in one process: each remedy's model (XLA, as
    the trainer compiles it) fits `steps_per_round` steps in turn, A B C A B C ..., for `rounds`
    rounds (`common.interleave`), so a busy phase of a shared machine hits every remedy alike.
    The input pipeline runs as in training (augmentation included). Returns name -> {median
    wall and CPU seconds per step, relative to plain}."""
    sys.path.insert(0, REPO_ROOT)
    sys.path.insert(0, BENCH_DIR)
    import common
    import recipes
    from trainers.config_values import parse_overrides

    recipe_class = type(recipes.get("classifier"))
    contenders = {}
    for name in names:
        overrides = parse_overrides(recipe_class, assignments=MODEL_CONFIGS[model] + remedy_overrides(name))
        recipe = recipes.get("classifier", **overrides)
        (train,) = recipe.datasets(splits=("train",), repeat=True)
        keras_model = recipe.build_model(total_steps=100_000, jit_compile=True)
        keras_model.fit(train, steps_per_epoch=3, verbose=0)  # trace and compile outside the timing

        def run(steps, keras_model=keras_model, train=train):
            with common.Timer() as timer:
                keras_model.fit(train, steps_per_epoch=steps, verbose=0)
            return [(timer.seconds / steps, timer.cpu_seconds / steps)]

        contenders[name] = run
    measured = common.interleave(contenders, rounds, steps_per_round, log=log)
    result = {}
    for name, values in measured.items():
        result[name] = {"wall_s": statistics.median(v[0] for v in values), "cpu_s": statistics.median(v[1] for v in values)}
    if "plain" in result:
        for values in result.values():
            values["relative_wall"] = values["wall_s"] / result["plain"]["wall_s"]
            values["relative_cpu"] = values["cpu_s"] / result["plain"]["cpu_s"]
    return result


def summarize(results):
    """Per remedy and set: mean, min and max accuracy and gap over seeds; time per step relative to plain."""
    summary = {}
    plain_time = None
    if "plain" in results:
        times = [r["seconds_per_step"] for r in results["plain"].values() if r["seconds_per_step"]]
        plain_time = statistics.mean(times) if times else None
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        sets = list(runs[0]["accuracy"])
        reference = sets[0]
        entry = {"seeds": sorted(int(seed) for seed in by_seed), "sets": {}}
        for set_name in sets:
            accuracies = [r["accuracy"][set_name] for r in runs]
            gaps = [r["accuracy"][set_name] - r["accuracy"][reference] for r in runs]
            entry["sets"][set_name] = {
                "mean": statistics.mean(accuracies), "min": min(accuracies), "max": max(accuracies),
                "gap_mean": statistics.mean(gaps), "gap_min": min(gaps), "gap_max": max(gaps),
            }
        times = [r["seconds_per_step"] for r in runs if r["seconds_per_step"]]
        entry["seconds_per_step"] = statistics.mean(times) if times else None
        entry["relative_step_time"] = entry["seconds_per_step"] / plain_time if plain_time and times else None
        summary[name] = entry
    return summary


def markdown(summary, model, split, timing=None):
    """The table; the time row from `timing` (`--timing`, interleaved) where it has the remedy, else from the training logs."""
    names = list(summary)
    sets = list(next(iter(summary.values()))["sets"])
    lines = [
        f"Remedies, `{model}` classifier, {split} split: accuracy, mean over seeds [min-max], and in brackets "
        "the mean change from the clean set.",
        "",
        "| set | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for index, set_name in enumerate(sets):
        cells = []
        for name in names:
            value = summary[name]["sets"][set_name]
            cell = f"{value['mean']:.3f} [{value['min']:.3f}-{value['max']:.3f}]"
            if index:
                cell += f" ({value['gap_mean']:+.3f})"
            cells.append(cell)
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    def relative_time(name):
        if timing and name in timing and "relative_wall" in timing[name]:
            return f"{timing[name]['relative_wall']:.2f}x"
        value = summary[name]["relative_step_time"]
        return f"{value:.2f}x (log)" if value else "-"

    lines.append("| time per step vs plain | " + " | ".join(relative_time(name) for name in names) + " |")
    lines.append("| seeds | " + " | ".join(",".join(map(str, summary[name]["seeds"])) for name in names) + " |")
    if any(relative_time(name).endswith("(log)") for name in names):
        lines += ["", "(log): from each run's training log, runs made at different times and machine loads, so only "
                  "a rough guide; the other times are interleaved in one process (`--timing`)."]
    return "\n".join(lines) + "\n"


def plot(summary, path, title, shifted="char_noise_10"):
    """Left: per remedy, the accuracy on each set (grouped bars, mean over seeds, min-max whiskers).
    Right: clean accuracy against the accuracy on `shifted` (typos, 10% of letters), one point per remedy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary)
    sets = [s for s in next(iter(summary.values()))["sets"] if s not in ("upper_case", "lower_case")]
    figure, (bars, scatter) = plt.subplots(
        1, 2, figsize=(max(8, 1.1 * len(names) + 3) + 5, 4.8), gridspec_kw={"width_ratios": [max(2, len(names) / 3), 1.6]}
    )
    width = 0.8 / len(sets)
    positions = np.arange(len(names))

    def spread(name, set_name):
        value = summary[name]["sets"][set_name]
        return value["mean"], value["mean"] - value["min"], value["max"] - value["mean"]

    for index, set_name in enumerate(sets):
        means, low, high = (np.array(v) for v in zip(*(spread(name, set_name) for name in names)))
        bars.bar(positions + (index - (len(sets) - 1) / 2) * width, means, width, yerr=[low, high], capsize=2,
                 label="clean" if index == 0 else set_name)
    bars.set_xticks(positions, names, rotation=20, ha="right")
    bars.set_ylabel("accuracy")
    bars.set_ylim(0.0, 1.12)
    bars.set_title(title)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=8, ncol=len(sets), loc="upper center")
    clean_set = sets[0]
    collapsed = [name for name in names if spread(name, clean_set)[0] < 0.5]  # off the scale: named in the title
    for index, name in enumerate(n for n in names if n not in collapsed):
        x, x_low, x_high = spread(name, clean_set)
        y, y_low, y_high = spread(name, shifted)
        scatter.errorbar(x, y, xerr=[[x_low], [x_high]], yerr=[[y_low], [y_high]], fmt="o", capsize=2)
        scatter.annotate(name, (x, y), textcoords="offset points", xytext=(5, 6 - 12 * (index % 2)), fontsize=7)
    scatter.set_xlabel("clean accuracy")
    scatter.set_ylabel(f"accuracy on {shifted}")
    scatter.set_title("clean vs shifted" + (f" (not shown, below 0.5: {', '.join(collapsed)})" if collapsed else ""), fontsize=9)
    scatter.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--remedies", default="plain,augment,fgm,pgd,rdrop,consistency-augment",
                        help=f"comma-separated, from: {', '.join(REMEDIES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--runs-dir", default="/tmp/zoo-remedies", help="run directories (reused when present)")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "remedies"))
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and plot from the saved JSON")
    parser.add_argument("--pipeline", action="store_true",
                        help="only time the training input pipeline (ms per batch) of each remedy, no training")
    parser.add_argument("--timing", action="store_true",
                        help="only time training steps, remedies interleaved in one process (--rounds x --steps-per-round)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=20)
    args = parser.parse_args()
    names = [name.strip() for name in args.remedies.split(",") if name.strip()]
    unknown = [name for name in names if name not in REMEDIES]
    if unknown:
        raise SystemExit(f"Unknown remedies {unknown}; valid: {', '.join(REMEDIES)}.")
    if args.pipeline:
        for name in names:
            log(f"{name}: {pipeline_milliseconds(name):.2f} ms per batch of the training pipeline")
        return
    if args.timing:
        os.makedirs(args.out, exist_ok=True)
        timing = step_times(args.model, names, args.rounds, args.steps_per_round)
        with open(os.path.join(args.out, f"remedies-{args.model}-timing.json"), "w") as f:
            json.dump({"model": args.model, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                       "remedies": {name: REMEDIES[name] for name in names}, "timing": timing}, f, indent=2)
        for name, values in timing.items():
            relative = f" ({values['relative_wall']:.2f}x plain; CPU {values['relative_cpu']:.2f}x)" if "relative_wall" in values else ""
            print(f"{name}: {values['wall_s'] * 1000:.0f} ms per step{relative}")
        return
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"remedies-{args.model}-{args.split}")
    if args.plot_only:
        with open(stem + ".json") as f:
            record = json.load(f)
    else:
        os.makedirs(args.runs_dir, exist_ok=True)
        results = {}
        for name in names:
            for seed in (int(s) for s in args.seeds.split(",")):
                results.setdefault(name, {})[str(seed)] = train_and_evaluate(args.model, name, seed, args.split, args.runs_dir)
        record = {
            "model": args.model, "split": args.split, "command": MODELS[args.model],
            "remedies": {name: REMEDIES[name] for name in names}, "results": results, "summary": summarize(results),
        }
        with open(stem + ".json", "w") as f:
            json.dump(record, f, indent=2)
    timing_path = os.path.join(args.out, f"remedies-{record['model']}-timing.json")
    timing = None
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)["timing"]
    table = markdown(record["summary"], record["model"], record["split"], timing)
    with open(stem + ".md", "w") as f:
        f.write(table)
    plot(record["summary"], stem + ".png", f"{record['model']} classifier: clean vs shifted accuracy ({record['split']})")
    print(table)


if __name__ == "__main__":
    main()
