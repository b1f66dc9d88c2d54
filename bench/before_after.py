"""Speed of this checkout against an earlier commit, through `train_throughput.py` and `generation.py`.

Both benchmarks run on both trees: the earlier commit is written out with `git archive` into a
temporary directory and run with `PYTHONPATH` on it (its own bench scripts, its own zoo), this
checkout as it is. Runs alternate, before / after / after / before ..., one process each.

Every run times the zoo's models against keras-hub's peers interleaved in the same process, so
the comparison goes through that yardstick: for each zoo contender and peer,

    after/before = (zoo / peer, this checkout) / (zoo / peer, the earlier commit)

A machine that is busier during one run slows the zoo model and its peer alike and cancels out
(absolute tokens/s ratios, which do not cancel it, are reported beside). Values above 1.00x mean
this checkout is faster. The result is the median over repeats and peers of each contender.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/before_after.py --baseline 2d0c788 --note "..."

Writes `bench/results/before-after-<baseline>.{json,md}` (`--out` another stem; `--no-save`: print only).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCHMARKS = {
    # name: (script, extra arguments); kept small enough for two trees and two repeats.
    # Training without XLA (what a CPU trains with, `--xla auto`); generation against keras-hub
    # with XLA (the zoo always compiles its generation).
    "train_throughput": ("train_throughput.py", ["--rounds", "5", "--xla", "off"]),
    "generation": ("generation.py", ["--rounds", "7", "--keras-hub-xla", "on"]),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tree and benchmark (default: %(default)s)")
    parser.add_argument("--no-save", action="store_true", help="print the results only; write no files")
    parser.add_argument("--out", help="results file stem in bench/results/ (default: before-after-<baseline>)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    return parser.parse_args()


def export_tree(revision, directory):
    """`revision`'s files in `directory`, with this checkout's virtual environment beside them."""
    archive = subprocess.run(["git", "archive", revision], cwd=common.REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    os.symlink(os.path.join(common.REPO_ROOT, ".venv"), os.path.join(directory, ".venv"))


def run_benchmark(tree, name, results_dir):
    """Runs benchmark `name` of `tree` and returns its JSON record."""
    script, extra = BENCHMARKS[name]
    environment = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.join(tree, "bench", script), *extra, "--results-dir", results_dir]
    print(f"  {os.path.relpath(command[1], tree)} in {tree}", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=tree, env=environment, check=True, stdout=subprocess.DEVNULL)
    (path,) = [os.path.join(results_dir, f) for f in os.listdir(results_dir) if f.endswith(".json")]
    with open(path) as f:
        return json.load(f)["runs"][-1]


def zoo_over_peer(name, record):
    """{(zoo contender, peer): (zoo / peer speed, zoo speed)} of one run."""
    pairs = {}
    if name == "train_throughput":
        for row in record["ratios"]:
            pairs[(row["ours"], row["peer"])] = (row["ratio"], record["contenders"][row["ours"]]["tokens_per_s"])
    else:
        for result in record["results"]:
            contenders = result["contenders"]
            zoo = next(label for label in contenders if label.startswith("zoo"))
            for label, values in contenders.items():
                if label != zoo:
                    pairs[(f"{zoo}, batch {result['batch_size']}", label)] = (
                        values["ratio_ours_over_this"], contenders[zoo]["new_tokens_per_s"])
    return pairs


def compare(name, before_runs, after_runs):
    """Per zoo contender: the median after/before of its ratio to each peer, and of its absolute speed."""
    before = [zoo_over_peer(name, record) for record in before_runs]
    after = [zoo_over_peer(name, record) for record in after_runs]
    rows = {}
    for key in before[0]:
        if not all(key in run for run in before + after):
            continue
        relative = [a[key][0] / b[key][0] for a in after for b in before]
        absolute = [a[key][1] / b[key][1] for a in after for b in before]
        rows.setdefault(key[0], {"relative": [], "absolute": []})
        rows[key[0]]["relative"].extend(relative)
        rows[key[0]]["absolute"].extend(absolute)
    return {
        contender: {
            "after_over_before": statistics.median(values["relative"]),
            "min": min(values["relative"]),
            "max": max(values["relative"]),
            "absolute_after_over_before": statistics.median(values["absolute"]),
        }
        for contender, values in rows.items()
    }


def markdown(record):
    lines = [
        f"Speed of {record['after']} against {record['baseline']}: each zoo contender's speed relative to keras-hub's "
        f"peers timed in the same process, after/before (median over {record['repeats']} runs per tree and every peer; "
        "above 1.00x: faster now). Absolute: the same for tokens/s alone, which machine load does not cancel.",
        "",
        common.machine_line(record["environment"]),
        "",
    ]
    rows = []
    for name, contenders in record["comparison"].items():
        for contender, values in contenders.items():
            rows.append([name, contender, f"{values['after_over_before']:.3f}x",
                         f"{values['min']:.3f}-{values['max']:.3f}", f"{values['absolute_after_over_before']:.3f}x"])
    lines.append(common.markdown_table(["benchmark", "zoo contender", "after/before", "range", "absolute"], rows))
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    names = [name for name in args.benchmarks.split(",") if name]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    baseline = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=common.REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    environment = common.environment()
    start = time.time()
    runs = {name: {"before": [], "after": []} for name in names}
    with tempfile.TemporaryDirectory(prefix="zoo-before-after-") as scratch:
        before_tree = os.path.join(scratch, "before")
        os.makedirs(before_tree)
        export_tree(baseline, before_tree)
        trees = {"before": before_tree, "after": common.REPO_ROOT}
        for repeat in range(args.repeats):
            order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
            for name in names:
                for side in order:
                    results_dir = os.path.join(scratch, f"{name}-{side}-{repeat}")
                    os.makedirs(results_dir)
                    runs[name][side].append(run_benchmark(trees[side], name, results_dir))
    environment["load_average_at_end"] = common.load_average()
    record = {
        "benchmark": "before_after",
        "baseline": baseline,
        "after": common.git_commit(),
        "repeats": args.repeats,
        "note": args.note,
        "seconds": round(time.time() - start),
        "environment": environment,
        "comparison": {name: compare(name, runs[name]["before"], runs[name]["after"]) for name in names},
        "runs": runs,
    }
    text = markdown(record)
    print(text)
    if not args.no_save:
        stem = os.path.join(common.RESULTS_DIR, args.out or f"before-after-{baseline}")
        with open(stem + ".json", "w") as f:
            json.dump(record, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(f"# Before/after {baseline}\n\n`{' '.join(sys.argv)}`\n\n" + (f"Note: {args.note}\n\n" if args.note else "") + text)
        print(f"Written {stem}.json and .md")


if __name__ == "__main__":
    main()
