"""How gpt-clm training throughput scales: with the sequence length, and with 1 vs 2 CPU replicas.

Part 1, sequence length: gpt-clm "tiny" (vocabulary 8192, 2 layers, hidden 128, 2 heads,
intermediate 512, float32) at sequence lengths 128, 256, 512, 1024 with the batch shrunk to keep
4,096 tokens a step (batch 32, 16, 8, 4): the matmuls stay the same size, so any loss of
tokens/s is the attention's T^2 part (scores and softmax grow with T) plus fixed per-step costs.

Part 2, replicas: the same model at sequence 128, global batch 32, trained
  - without a strategy (the trainer's path on one CPU), XLA on and off;
  - under MirroredStrategy over 1 and over 2 logical CPU devices (`use_logical_cpus`, then
    `get_strategy("mirrored")`). XLA is off for these: TensorFlow's XLA cannot compile CPU
    collectives, and `trainers.trainer.resolve_jit_compile` turns it off for 2 replicas on CPU;
    the 1-replica run is kept XLA-off too so that only the replica count differs.
  Logical devices must be set before TensorFlow initialises, so each configuration is a
  separate worker process (this script with `--worker`).

Every configuration is a worker process that builds its model and then waits for "run N steps"
on stdin; the parent drives them in turn (A B C A B C ...) so only one computes at a time, and
takes per-step times from `model.fit` (a callback around each batch, the dataset one synthetic
batch repeated). tokens/s = tokens per step / median step time.

Example:
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/scaling.py
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/scaling.py --rounds 2 --parts replicas --no-save
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

SEQUENCE_LENGTHS = (128, 256, 512, 1024)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="sequence,replicas", help="which parts: sequence, replicas or both (default: %(default)s)")
    parser.add_argument("--sequence-lengths", default=",".join(map(str, SEQUENCE_LENGTHS)),
                        help="part 1's sequence lengths (default: %(default)s)")
    parser.add_argument("--tokens-per-step", type=int, default=4096, help="batch x sequence length, kept constant (default: %(default)s)")
    parser.add_argument("--xla", default="on", help="part 1's XLA settings: on, off or on,off (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="timed steps per configuration per round (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one (default: %(default)s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON configuration of a worker process
    common.add_common_arguments(parser)
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    args.sequence_lengths = [int(t) for t in args.sequence_lengths.split(",") if t]
    args.xla = [s == "on" for s in args.xla.split(",")]
    for length in args.sequence_lengths:
        if args.tokens_per_step % length:
            parser.error(f"--tokens-per-step {args.tokens_per_step} is not a multiple of sequence length {length}")
    return args


# -- worker side -----------------------------------------------------------------------------


def worker(config):
    """Builds one configuration, reports readiness, then answers {"steps": N} with step times."""
    from trainers.strategy import distribute_dataset_options, get_strategy, use_logical_cpus

    if config["strategy"] == "mirrored":
        use_logical_cpus(config["devices"])  # before anything initialises TensorFlow
        strategy = get_strategy("mirrored")
    else:
        strategy = get_strategy("auto")
    import keras
    import tensorflow as tf

    import recipes
    from trainers.trainer import resolve_jit_compile

    jit_compile = resolve_jit_compile(config["xla"], strategy)
    recipe = recipes.get("gpt-clm", preset="tiny", sequence_length=config["sequence_length"])
    with strategy.scope():
        model = recipe.build_model(jit_compile=jit_compile)
    arrays = common.synthetic_batches("clm", config["batch_size"], config["sequence_length"], recipe.config.vocabulary_size)
    dataset = tf.data.Dataset.from_tensors((arrays["token_ids"], arrays["labels"])).repeat()
    dataset = dataset.with_options(distribute_dataset_options())

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.cpu_start = time.process_time()
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append((time.perf_counter() - self.start, time.process_time() - self.cpu_start))

    timer = StepTimes()

    def run(steps):
        timer.times = []
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        return timer.times

    first = run(1)[0][0]
    run(config["warmup"])
    reply({"first_call_s": first, "jit_compile": bool(model.jit_compile), "replicas": strategy.num_replicas_in_sync,
           "devices": [d.name for d in tf.config.list_logical_devices("CPU")]})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        reply({"times": run(int(request["steps"]))})


def reply(message):
    # Keras or TensorFlow may print to stdout too: mark our lines.
    print("@@" + json.dumps(message), flush=True)


# -- parent side -----------------------------------------------------------------------------


class Worker:
    def __init__(self, config):
        command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self.read()

    def read(self):
        for line in self.process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"A scaling worker exited (code {self.process.wait()}); see its messages above.")

    def run(self, steps):
        self.process.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.process.stdin.flush()
        return self.read()["times"]

    def close(self):
        try:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def measure(configs, args):
    """label -> config: starts the workers one after the other (compiling is CPU-heavy), then interleaves them."""
    workers = {}
    try:
        for label, config in configs.items():
            print(f"Starting {label}...")
            workers[label] = Worker({**config, "warmup": args.warmup})
            print(f"  ready: {workers[label].info}")
        times = common.interleave({label: w.run for label, w in workers.items()}, args.rounds, args.steps_per_round)
    finally:
        for w in workers.values():
            w.close()
    return {
        label: {**configs[label], **workers[label].info, **common.summarize(times[label], configs[label]["batch_size"] * configs[label]["sequence_length"])}
        for label in configs
    }


def main():
    args = parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    env = common.environment()
    print(common.machine_line(env))
    record = {"config": {"model": "gpt-clm tiny", "precision": "float32", "rounds": args.rounds,
                         "steps_per_round": args.steps_per_round, "warmup": args.warmup, "step": "model.fit, one batch per step"},
              "environment": env}
    if "sequence" in args.parts:
        configs = {}
        for xla in args.xla:
            for length in args.sequence_lengths:
                configs[f"T={length}, batch {args.tokens_per_step // length}, XLA {'on' if xla else 'off'}"] = {
                    "sequence_length": length, "batch_size": args.tokens_per_step // length, "strategy": "default", "devices": 1, "xla": xla,
                }
        record["sequence"] = measure(configs, args)
    if "replicas" in args.parts:
        configs = {
            "no strategy, XLA on": {"strategy": "default", "devices": 1, "xla": True},
            "no strategy, XLA off": {"strategy": "default", "devices": 1, "xla": False},
            "MirroredStrategy, 1 logical CPU, XLA off": {"strategy": "mirrored", "devices": 1, "xla": False},
            "MirroredStrategy, 2 logical CPUs, XLA off": {"strategy": "mirrored", "devices": 2, "xla": True},  # resolve_jit_compile turns it off
        }
        configs = {label: {**c, "sequence_length": 128, "batch_size": 32} for label, c in configs.items()}
        record["replicas"] = measure(configs, args)
    env["load_average_at_end"] = common.load_average()
    common.save_results(args, "scaling", record, markdown(record))


def markdown(record):
    c = record["config"]
    lines = [f"gpt-clm tiny scaling, {c['precision']}, median of {c['rounds'] * c['steps_per_round']} `fit` steps per "
             f"configuration, {c['rounds']} interleaved rounds, after warm-up.", "", common.machine_line(record["environment"]), ""]
    if "sequence" in record:
        results = record["sequence"]
        first = next(iter(results.values()))
        lines += [
            "Sequence length (batch adjusted to keep tokens per step constant):", "",
            common.markdown_table(
                ["configuration", "tokens/step", "tokens/s", "vs first row", "step ms p25-p75", "tokens per CPU-s", "first call s"],
                [[label, common.fmt(r["tokens_per_step"]), common.fmt(r["tokens_per_s"]), f"{r['tokens_per_s'] / first['tokens_per_s']:.2f}x",
                  f"{r['p25_s'] * 1000:.0f}-{r['p75_s'] * 1000:.0f}", common.fmt(r["tokens_per_cpu_s"]), f"{r['first_call_s']:.1f}"]
                 for label, r in results.items()],
            ), "",
        ]
    if "replicas" in record:
        results = record["replicas"]
        reference = results.get("MirroredStrategy, 1 logical CPU, XLA off") or next(iter(results.values()))
        lines += [
            "Replicas (sequence 128, global batch 32):", "",
            common.markdown_table(
                ["configuration", "replicas", "XLA really on", "tokens/s", "vs mirrored x1", "step ms p25-p75", "tokens per CPU-s"],
                [[label, r["replicas"], "yes" if r["jit_compile"] else "no", common.fmt(r["tokens_per_s"]),
                  f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}x", f"{r['p25_s'] * 1000:.0f}-{r['p75_s'] * 1000:.0f}",
                  common.fmt(r["tokens_per_cpu_s"])]
                 for label, r in results.items()],
            ), "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
