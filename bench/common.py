"""What the benchmark scripts share: the shared "tiny" shape, synthetic batches, the interleaved
timing loop, the machine description, and writing results (JSON + markdown).

Importing this module is cheap: it imports neither TensorFlow nor Keras, so `gpu_mfu.py` (JAX
only) and the torch peer can use it too. Never imported by the tests.
"""

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

# The shared CPU configuration ("tiny"): the shape every contender of the CPU benchmarks trains.
TINY = {
    "vocabulary_size": 8192,
    "num_layers": 2,
    "hidden_dim": 128,
    "num_heads": 2,
    "intermediate_dim": 512,
    "sequence_length": 128,
    "batch_size": 32,
}
MASKED_POSITIONS = 20  # predictions per sequence in the MLM benchmarks (as keras-hub's anchor)
NUM_CLASSES = 4


# -- synthetic data ---------------------------------------------------------------------------


def synthetic_batches(kind, batch_size, sequence_length, vocabulary_size, masked_positions=MASKED_POSITIONS,
                      num_classes=NUM_CLASSES, seed=0):
    """Numpy arrays for one training batch, the same for every contender of a kind.

    kind "clm": token_ids [B, T] and next-token labels [B, T].
    kind "mlm": token_ids, padding_mask (all true), mask_positions [B, P] (distinct, sorted, never
        the first or last position), labels [B, P] and sample weights [B, P] (all 1).
    kind "classify": token_ids, padding_mask, labels [B].
    Token ids avoid 0-4 (padding and special tokens) so no contender treats them specially.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocabulary_size, size=(batch_size, sequence_length + 1), dtype=np.int64).astype(np.int32)
    if kind == "clm":
        return {"token_ids": ids[:, :-1], "labels": ids[:, 1:].copy()}
    token_ids = ids[:, :-1].copy()
    padding_mask = np.ones((batch_size, sequence_length), dtype=bool)
    if kind == "mlm":
        positions = np.stack(
            [np.sort(rng.choice(np.arange(1, sequence_length - 1), masked_positions, replace=False)) for _ in range(batch_size)]
        ).astype(np.int32)
        labels = np.take_along_axis(token_ids, positions, axis=1).copy()
        np.put_along_axis(token_ids, positions, 4, axis=1)  # a "[MASK]" id
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "mask_positions": positions,
            "labels": labels,
            "sample_weight": np.ones((batch_size, masked_positions), dtype=np.float32),
        }
    if kind == "classify":
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "labels": rng.integers(0, num_classes, size=(batch_size,)).astype(np.int32),
        }
    raise ValueError(f"Unknown batch kind {kind!r}; expected clm, mlm or classify.")


# -- timing ------------------------------------------------------------------------------------


def interleave(contenders, rounds, steps_per_round, log=print):
    """Runs every contender `steps_per_round` timed steps, in turn, for `rounds` rounds (A B C A B C ...).

    `contenders` maps name -> run(steps) returning a list of per-step measurements: wall seconds,
    or (wall seconds, CPU seconds of the process) pairs. Interleaving spreads slow phases of a
    shared machine (other processes, thermal) over all contenders instead of penalising
    whichever ran during them. Returns name -> all measurements.
    """
    times = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, run in contenders.items():
            step_times = run(steps_per_round)
            times[name].extend(step_times)
            walls = [t[0] if isinstance(t, (tuple, list)) else t for t in step_times]
            log(f"  round {round_index + 1}/{rounds} {name}: " + " ".join(f"{t * 1000:.0f}" for t in walls) + " ms")
    return times


def summarize(step_times, tokens_per_step):
    """Median, spread and tokens/s of a list of step times (wall seconds, or (wall, CPU) pairs).

    With CPU times, `cpu_median_s` is the median CPU time of the process per step (all its
    threads): on a machine shared with other work it moves less than the wall time, and
    `tokens_per_cpu_s` is a second, contention-resistant view of efficiency.
    """
    cpu_times = [t[1] for t in step_times if isinstance(t, (tuple, list))]
    step_times = [t[0] if isinstance(t, (tuple, list)) else t for t in step_times]
    median = statistics.median(step_times)
    ordered = sorted(step_times)
    quartile = max(0, len(ordered) // 4)
    summary = {
        "steps": len(step_times),
        "median_s": median,
        "p25_s": ordered[quartile],
        "p75_s": ordered[-1 - quartile],
        "min_s": ordered[0],
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / median,
        "step_times_s": [round(t, 6) for t in step_times],
    }
    if cpu_times:
        cpu_median = statistics.median(cpu_times)
        summary.update(cpu_median_s=cpu_median, tokens_per_cpu_s=tokens_per_step / cpu_median,
                       cpu_times_s=[round(t, 6) for t in cpu_times])
    return summary


class Timer:
    """Wall (`seconds`) and process CPU (`cpu_seconds`) time of a block."""

    def __enter__(self):
        self.cpu_start = time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start

    @property
    def both(self):
        return (self.seconds, self.cpu_seconds)


# -- the machine -------------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    except OSError:
        pass
    return []


def machine_slug():
    """A short name for this machine kind, e.g. `amd-epyc-2cpu`, used in result file names."""
    model = re.sub(r"\(.*?\)|processor|cpu|\d+-core", " ", cpu_model().lower())
    words = [w for w in re.split(r"[^a-z0-9]+", model) if w][:3]
    return "-".join(words + [f"{os.cpu_count()}cpu"])


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(extra_packages=("tensorflow", "keras", "keras_hub", "jax", "numpy")):
    """Where and with what the numbers were taken. Versions are read from package metadata
    (importing TensorFlow just to print its version would defeat the JAX-only script)."""
    from importlib import metadata

    versions = {}
    for package in extra_packages:
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": versions,
        "git_commit": git_commit(),
        "load_average_at_start": load_average(),
    }


# -- results -----------------------------------------------------------------------------------


def add_common_arguments(parser):
    parser.add_argument("--machine", default=None,
                        help="name of the machine in the result file names (default: from the CPU model and count, "
                             f"here {machine_slug()!r})")
    parser.add_argument("--results-dir", default=RESULTS_DIR, help="where the JSON and markdown results go (default: %(default)s)")
    parser.add_argument("--no-save", action="store_true", help="print the results only; write no files")
    parser.add_argument("--note", default="", help="free text stored with the run (e.g. 'machine shared with a test run')")


def save_results(args, benchmark, record, markdown):
    """Appends one run to `<results-dir>/<date>-<machine>.json` (a list of runs) and its markdown
    section to `<date>-<machine>.md`. Each file is written through a `.tmp` file and renamed, so
    a killed run never leaves half a JSON file."""
    record = {
        "benchmark": benchmark,
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
        "note": args.note,
        **record,
    }
    record.setdefault("environment", {})["load_average_at_end"] = load_average()
    # `machine_line` ran before the end was known: give the markdown the real value.
    markdown = markdown.replace("at end None.", f"at end {record['environment']['load_average_at_end']}.")
    print(markdown)
    if args.no_save:
        return None
    os.makedirs(args.results_dir, exist_ok=True)
    stem = f"{datetime.date.today().isoformat()}-{args.machine or machine_slug()}"
    json_path = os.path.join(args.results_dir, stem + ".json")
    runs = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            runs = json.load(f)["runs"]
    runs.append(record)
    _write_atomically(json_path, json.dumps({"runs": runs}, indent=1) + "\n")
    md_path = os.path.join(args.results_dir, stem + ".md")
    previous = open(md_path).read() if os.path.exists(md_path) else f"# Benchmark results, {stem}\n\n"
    header = f"## {benchmark} ({record['timestamp']})\n\n`{record['command']}`\n\n"
    if args.note:
        header += f"Note: {args.note}\n\n"
    _write_atomically(md_path, previous + header + markdown.strip() + "\n\n")
    print(f"Results appended to {os.path.relpath(json_path)} and {os.path.relpath(md_path)}")
    return json_path


def _write_atomically(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(env):
    return (
        f"Machine: {env['cpu']} ({env['logical_cpus']} logical CPUs; {', '.join(env['cpu_flags']) or 'no AVX2'}); "
        f"load average at start {env['load_average_at_start']}, at end {env.get('load_average_at_end')}."
    )


def fmt(number, digits=0):
    return f"{number:,.{digits}f}"
