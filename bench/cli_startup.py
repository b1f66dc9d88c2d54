"""Start-up time of the `zoo` command: how soon a mistyped name is reported.

The command checks the recipe, preset and `--set` keys against a copy of the registry
(`trainers/catalog.py`) before it imports TensorFlow, so that a typo costs a fraction of a
second instead of the TensorFlow import. This measures it: each command runs in a fresh
process, all of them in turn, round after round (A B C ... A B C ...: a busy moment of a
shared machine hits every command, not whichever ran then), and the report gives per command
the median and the min-max of the wall time, and the median CPU time of the process and its
children (steadier than the wall time on a shared machine).

- `python -c pass`: the interpreter alone, the floor under any command;
- `zoo --version`, `zoo train no-such-recipe`, `zoo train gpt-clm --set no_such_key=1`: answered
  before TensorFlow (the two errors exit with status 2 and one line);
- for contrast, `python -c "import tensorflow"`, and `zoo predict no-such-export x`, an error that
  is only found after TensorFlow is imported (every typo took that long before the check).

Each run checks the exit status and the error line, so a broken command is never timed as a
fast one. A benchmark, not a test: tests are never timed.

    .venv/bin/python bench/cli_startup.py [--rounds 7] [--note TEXT]

Writes bench/results/cli-startup.json and cli-startup.md (replacing the previous ones).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PYTHON = sys.executable
ZOO = os.path.join(os.path.dirname(PYTHON), "zoo")  # the console script `pip install -e .` wrote

# name: (command, what it shows, expected exit status, a fragment its stderr must hold)
COMMANDS = {
    "python": ([PYTHON, "-c", "pass"], "the interpreter alone", 0, ""),
    "version": ([ZOO, "--version"], "answered before TensorFlow", 0, ""),
    "unknown-recipe": ([ZOO, "train", "no-such-recipe"], "error before TensorFlow", 2,
                       "zoo train: error: Unknown recipe 'no-such-recipe'"),
    "unknown-key": ([ZOO, "train", "gpt-clm", "--set", "no_such_key=1"], "error before TensorFlow", 2,
                    "zoo train: error: Unknown config key(s) 'no_such_key'"),
    "import-tensorflow": ([PYTHON, "-c", "import tensorflow"], "TensorFlow's import alone", 0, ""),
    "error-after-import": ([ZOO, "predict", "no-such-export", "x"], "error found after TensorFlow", 2,
                               "zoo predict: error: "),
}
FAST = ("unknown-recipe", "unknown-key")


def run_once(name):
    """(wall seconds, CPU seconds of the process and its children) of one run of command `name`."""
    command, _, status, fragment = COMMANDS[name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO_ROOT, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != status or fragment not in result.stderr:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode} (expected {status}); "
                           f"stderr:\n{result.stderr[-2000:]}")
    return wall, cpu


def summary(times):
    walls = [wall for wall, _ in times]
    return {
        "runs": len(times),
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "cpu_median_s": statistics.median(cpu for _, cpu in times),
        "wall_s": [round(wall, 4) for wall in walls],
        "cpu_s": [round(cpu, 4) for _, cpu in times],
    }


def shown(command):
    """The command as a user types it (`zoo`, `python`), for the report."""
    words = ["zoo" if word == ZOO else "python" if word == PYTHON else word for word in command]
    return " ".join(f'"{word}"' if " " in word else word for word in words)


def markdown(record):
    results = record["results"]
    rows = [[f"`{results[name]['command']}`", results[name]["what"], f"{s['median_s']:.2f} s",
             f"{s['min_s']:.2f}-{s['max_s']:.2f} s", f"{s['cpu_median_s']:.2f} s"]
            for name in results for s in [results[name]["summary"]]]
    slowest_fast = max(results[name]["summary"]["median_s"] for name in FAST)
    tensorflow = results["import-tensorflow"]["summary"]["median_s"]
    lines = [
        "# `zoo` start-up: errors before TensorFlow",
        "",
        f"`{record['command']}`",
        "",
        *([f"Note: {record['note']}", ""] if record["note"] else []),
        f"Each command in a fresh process, {record['rounds']} interleaved rounds; wall time median and "
        "min-max, CPU time (the process and its children) median.",
        "",
        common.markdown_table(["command", "what it shows", "wall, median", "wall, min-max", "CPU, median"], rows),
        "",
        f"An unknown recipe or config key is reported in at most {slowest_fast:.2f} s (median), "
        f"{tensorflow / slowest_fast:.0f}x sooner than TensorFlow's import alone ({tensorflow:.1f} s).",
        "",
        common.machine_line(record["environment"]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command, interleaved (default %(default)s)")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help="comma-separated names (default: all: %(default)s)")
    parser.add_argument("--results-dir", default=common.RESULTS_DIR, help="where the JSON and markdown go (default: %(default)s)")
    parser.add_argument("--no-save", action="store_true", help="print the results only; write no files")
    parser.add_argument("--note", default="", help="free text stored with the run (e.g. 'machine shared with a test run')")
    args = parser.parse_args(argv)
    names = args.commands.split(",")
    unknown = [name for name in names if name not in COMMANDS]
    if unknown:
        parser.error(f"unknown command name(s) {', '.join(unknown)}; expected some of {', '.join(COMMANDS)}")
    if not all(name in names for name in FAST + ("import-tensorflow",)):
        parser.error(f"--commands must include {', '.join(FAST)} and import-tensorflow (the report compares them)")
    if not os.path.exists(ZOO):
        parser.error(f"{ZOO} not found: install the project in this interpreter's environment (pip install -e .)")
    environment = common.environment(("tensorflow", "keras", "keras_hub"))
    print(common.machine_line(environment), flush=True)
    times = {name: [] for name in names}
    for index in range(args.rounds):
        for name in names:
            times[name].append(run_once(name))
        print(f"  round {index + 1}/{args.rounds}: "
              + ", ".join(f"{name} {times[name][-1][0]:.2f} s" for name in names), flush=True)
    record = {
        "benchmark": "cli-startup",
        "command": " ".join([os.path.relpath(sys.argv[0], common.REPO_ROOT)] + sys.argv[1:]),
        "note": args.note,
        "rounds": args.rounds,
        "results": {name: {"command": shown(COMMANDS[name][0]), "what": COMMANDS[name][1], "summary": summary(times[name])}
                    for name in names},
        "environment": {**environment, "load_average_at_end": common.load_average()},
    }
    text = markdown(record)
    print(text)
    if args.no_save:
        return 0
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "cli-startup.json"), "w") as file:
        json.dump(record, file, indent=1)
        file.write("\n")
    with open(os.path.join(args.results_dir, "cli-startup.md"), "w") as file:
        file.write(text)
    print(f"Results written to {os.path.relpath(os.path.join(args.results_dir, 'cli-startup'))}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
