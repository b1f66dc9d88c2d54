"""int8 against float32 exports of one classification run: size, serving latency, test accuracy.

    python bench/quantization.py runs/classifier-tiny [--batch-sizes 1,32] [--rounds 5] [--calls 20]

Exports the run's best checkpoint twice (`zoo export` and `zoo export --quantize int8`, Keras'
own post-training quantization), loads both SavedModels with TensorFlow alone, and measures:
the size of `variables/`; the latency of the `classify` signature (raw text in) at each batch
size, as the median of `calls` calls per round over `rounds` rounds interleaved between the
two exports (A B A B ...: a shared machine's slow phases hit both); the test split's accuracy
and the share of test texts on which the two exports' labels agree.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a classification run directory (classifier, multitask, distill)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per export, batch size and round (default %(default)s)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    env = common.environment()

    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - the exports' tokenizer ops

    from trainers.trainer import load_run

    model, recipe = load_run(args.run_dir)
    if recipe.kind != "classification":
        parser.error(f"{args.run_dir} is a {recipe.name} run; this benchmark needs a classification run.")
    test = recipe.examples(split="test")
    out = tempfile.mkdtemp(prefix="zoo-quantization-")
    paths = {"float32": recipe.export(model, os.path.join(out, "float32", "1"))}
    model, recipe = load_run(args.run_dir)  # quantization changes the model in place: a fresh copy
    paths["int8"] = recipe.export(model, os.path.join(out, "int8", "1"), quantize="int8")
    classify = {name: tf.saved_model.load(path).signatures["classify"] for name, path in paths.items()}

    labels = {}
    for name, function in classify.items():
        predicted = []
        for start in range(0, len(test.texts), 256):
            predicted += function(text=tf.constant(test.texts[start:start + 256]))["label_id"].numpy().tolist()
        labels[name] = np.asarray(predicted)
    size = {name: sum(os.path.getsize(os.path.join(path, "variables", f)) for f in os.listdir(os.path.join(path, "variables")))
            for name, path in paths.items()}

    latency = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        texts = tf.constant((test.texts * (batch_size // len(test.texts) + 1))[:batch_size])

        def runner(function):
            def run(calls):
                function(text=texts)  # warm: tracing and allocation are not serving latency
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    function(text=texts)["label_id"].numpy()
                    times.append(time.perf_counter() - start)
                return times

            return run

        times = common.interleave({name: runner(f) for name, f in classify.items()}, args.rounds, args.calls)
        for name, values in times.items():
            latency[(name, batch_size)] = statistics.median(values)

    accuracy = {name: float(np.mean(values == np.asarray(test.labels))) for name, values in labels.items()}
    agreement = float(np.mean(labels["float32"] == labels["int8"]))
    rows = []
    for name in paths:
        rows.append([name, f"{size[name] / 1e6:.2f} MB"]
                    + [f"{latency[(name, b)] * 1000:.1f} ms" for b in [int(b) for b in args.batch_sizes.split(",")]]
                    + [f"{accuracy[name]:.4f}"])
    header = ["export", "variables"] + [f"p50 classify, batch {b}" for b in args.batch_sizes.split(",")] + ["test accuracy"]
    markdown = "\n".join([
        f"Run: `{args.run_dir}` ({recipe.name}, {len(test.texts)} test texts). int8 labels agree with float32 on "
        f"{agreement:.4f} of them.", "", common.markdown_table(header, rows), "", common.machine_line(env),
    ])
    record = {
        "run_dir": args.run_dir, "recipe": recipe.name, "sizes_bytes": size, "accuracy": accuracy, "agreement": agreement,
        "p50_seconds": {f"{name}/batch{b}": value for (name, b), value in latency.items()}, "environment": env,
    }
    common.save_results(args, "quantization", record, markdown)


if __name__ == "__main__":
    main()
