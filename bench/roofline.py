"""The floor under the speed targets: how long the matrix products alone take on this machine.

A training step of the shared "tiny" shape is mostly matrix products, and every contender
(the zoo, keras-hub, torch) computes the same ones in float32. This script lists the products of
one step (forward and backward, analytically from the shape), runs exactly those products with
TensorFlow's own kernels on this machine, and compares their time with the step times that
`train_throughput.py` and `generation.py` last recorded:

  floor            the products alone: no softmax, layer norm, GELU, dropout, loss or optimiser;
                   any implementation that computes them in float32 needs at least this long
  reachable        the peer's step time / floor: the highest ratio ours/peer that ANY float32
                   implementation of the step could show against that recorded peer run
  ours             our recorded step time; ours - floor is what is left to optimise

Training products run without XLA (oneDNN; the faster setting on this CPU for every
contender), one `tf.function` call per product, and once all together as a products-only step.
Generation products (one decoding step: per layer a fused QKV, attention over the cache, output
and feed-forward projections, then the vocabulary projection) run in an XLA-compiled loop of
decoding steps, the way `CausalLM.generate` runs them, with a data dependency from each step to
the next. Generation's floor counts decoding steps only (the prompt's prefill is left out), so
it is a lower bound too.

Products per step, for M = batch x sequence tokens and a dense layer [K -> N]:
forward X[M,K] @ W[K,N], backward dY @ W^T and X^T @ dY; attention per layer Q K^T and P V, each
with its two backward products; bert-mlm's head works on the gathered masked positions only, as
keras-hub's and HF's gathered variant do.

Example:
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/roofline.py                   # 1 thread, vs the latest --threads 1 run
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/roofline.py --part generation --threads 0
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TRAIN_RECIPES = ("bert-mlm", "gpt-clm", "classifier")
KERAS_HUB = {"bert-mlm": "keras-hub BertMaskedLM", "gpt-clm": "keras-hub GPT2CausalLM",
             "classifier": "keras-hub BertTextClassifier"}
TARGETS = {"bert-mlm": 1.7, "gpt-clm": 1.5}  # ours/keras-hub, issue #7
GENERATION_TARGET = {1: 2.0}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("train", "generation", "both"), default="both",
                        help="which floors to measure (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow's intra- and inter-op threads; 0 = its default. The comparison uses the latest "
                             "recorded run with the same setting (train_throughput --threads; generation runs use the "
                             "default, 0) (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per product (median) (default: %(default)s)")
    parser.add_argument("--decode-steps", type=int, default=200, help="decoding steps per timed generation loop (default: %(default)s)")
    parser.add_argument("--cache-positions", type=int, default=80,
                        help="key/value positions each decoding step attends to: the mean over generation.py's call, "
                             "16 prompt + 128 new tokens (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,8", help="generation batch sizes (default: %(default)s)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    return args


# -- the products of one training step --------------------------------------------------------


def dense(name, m, k, n):
    """(kind, product) pairs, the forward and backward products of X[m,k] @ W[k,n]; a product is
    (name, batch, rows, inner, cols, transpose_a, transpose_b)."""
    return [
        (name, (f"{name} forward", 1, m, k, n, False, False)),
        (name, (f"{name} dX", 1, m, n, k, False, True)),    # dY[m,n] @ W[k,n]^T
        (name, (f"{name} dW", 1, k, m, n, True, False)),    # X[m,k]^T @ dY[m,n]
    ]


def attention(batch_heads, t, d):
    return [
        ("scores", ("Q K^T", batch_heads, t, d, t, False, True)),
        ("scores", ("dQ = dS K", batch_heads, t, t, d, False, False)),
        ("scores", ("dK = dS^T Q", batch_heads, t, t, d, True, False)),
        ("context", ("P V", batch_heads, t, t, d, False, False)),
        ("context", ("dP = dC V^T", batch_heads, t, d, t, False, True)),
        ("context", ("dV = P^T dC", batch_heads, t, t, d, True, False)),
    ]


def training_products(recipe, shape, masked_positions, num_classes):
    b, t = shape["batch_size"], shape["sequence_length"]
    d, f, h, v = shape["hidden_dim"], shape["intermediate_dim"], shape["num_heads"], shape["vocabulary_size"]
    m = b * t
    layer = (dense("QKV projection", m, d, 3 * d) + attention(b * h, t, d // h) + dense("attention output", m, d, d)
             + dense("feed-forward in", m, d, f) + dense("feed-forward out", m, f, d))
    products = layer * shape["num_layers"]
    if recipe == "gpt-clm":
        head = dense("vocabulary projection", m, d, v)
    elif recipe == "bert-mlm":
        p = b * masked_positions
        head = dense("MLM transform", p, d, d) + dense("vocabulary projection (masked positions)", p, d, v)
    elif recipe == "classifier":
        head = dense("pooler", b, d, d) + dense("classes", b, d, num_classes)
    else:
        raise ValueError(f"Unknown recipe {recipe!r}; expected one of {', '.join(TRAIN_RECIPES)}.")
    return products + head


def flops(product):
    _, batch, rows, inner, cols, _, _ = product
    return 2 * batch * rows * inner * cols


def operands(product, tf, seed):
    _, batch, rows, inner, cols, transpose_a, transpose_b = product
    a_shape = (inner, rows) if transpose_a else (rows, inner)
    b_shape = (cols, inner) if transpose_b else (inner, cols)
    if batch > 1:
        a_shape, b_shape = (batch,) + a_shape, (batch,) + b_shape
    g = tf.random.Generator.from_seed(seed)
    return g.normal(a_shape), g.normal(b_shape)


def median_call_s(fn, arguments, repeats):
    for _ in range(3):
        fn(*arguments)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*arguments)
        _ = [r.numpy() for r in (result if isinstance(result, (list, tuple)) else [result])][0]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PEAK_SHAPES = ((2048, 2048, 2048), (4096, 128, 8192), (1024, 1024, 1024))


def product_function(tf):
    # Only one element of each product leaves the function: the product itself stays an
    # intermediate, as in a training step. (Returning a [4096, 8192] result makes every call pay
    # for fresh pages: 107 ms instead of 79 for the vocabulary projection, measured here.)
    @tf.function(autograph=False)
    def one(a, b, transpose_a, transpose_b):
        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)[..., 0, 0]

    return one


def peak_rate(args, tf):
    """The best float32 product rate (FLOP/s) TensorFlow reaches on this machine, over a few large shapes."""
    one = product_function(tf)
    rates = {}
    for m, k, n in PEAK_SHAPES:
        product = ("peak", 1, m, k, n, False, False)
        a, b = operands(product, tf, seed=m + k + n)
        rates[f"{m}x{k}x{n}"] = flops(product) / median_call_s(lambda a, b: one(a, b, False, False), [a, b], args.repeats)
    return max(rates.values()), rates


def training_floor(recipe, shape, args, tf):
    products = training_products(recipe, shape, common.MASKED_POSITIONS, common.NUM_CLASSES)
    one = product_function(tf)

    @tf.function(autograph=False)
    def empty(a):
        return tf.identity(a)

    overhead = median_call_s(empty, [tf.zeros([1])], args.repeats * 4)
    rows, all_operands = [], []
    for index, (kind, product) in enumerate(products):
        a, b = operands(product, tf, seed=index)
        all_operands.append((a, b))
        key = product[1:]
        cached = next((r for r in rows if r["key"] == key), None)
        if cached is not None:
            seconds = cached["seconds"]
        else:
            fn = lambda a, b, ta=product[5], tb=product[6]: one(a, b, ta, tb)  # noqa: E731
            seconds = max(median_call_s(fn, [a, b], args.repeats) - overhead, 0.0)
        rows.append({"kind": kind, "key": key, "flops": flops(product), "seconds": seconds})

    flags = [(p[5], p[6]) for _, p in products]

    @tf.function(autograph=False)
    def products_only_step(*tensors):
        return [tf.linalg.matmul(tensors[2 * i], tensors[2 * i + 1], transpose_a=ta, transpose_b=tb)[..., 0, 0]
                for i, (ta, tb) in enumerate(flags)]

    together = median_call_s(products_only_step, [t for pair in all_operands for t in pair], args.repeats) - overhead
    total_flops = sum(r["flops"] for r in rows)
    by_kind = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"flops": 0, "seconds": 0.0})
        k["flops"] += r["flops"]
        k["seconds"] += r["seconds"]
    summed = sum(r["seconds"] for r in rows)
    return {
        "products": len(rows),
        "flops": total_flops,
        "sum_of_products_s": summed,
        "products_only_step_s": together,
        "floor_s": min(summed, together),
        "gflops_per_s": total_flops / min(summed, together) / 1e9,
        "by_kind": by_kind,
        "call_overhead_s": overhead,
    }


# -- one decoding step ------------------------------------------------------------------------


def generation_floor(batch_size, shape, args, tf):
    d, f, h, v = shape["hidden_dim"], shape["intermediate_dim"], shape["num_heads"], shape["vocabulary_size"]
    layers, positions, head_dim = shape["num_layers"], args.cache_positions, shape["hidden_dim"] // shape["num_heads"]
    g = tf.random.Generator.from_seed(0)
    weights = [
        {"qkv": g.normal([d, 3 * d]) * 0.05, "out": g.normal([d, d]) * 0.05, "ffn_in": g.normal([d, f]) * 0.05,
         "ffn_out": g.normal([f, d]) * 0.05, "keys": g.normal([batch_size, h, positions, head_dim]),
         "values": g.normal([batch_size, h, positions, head_dim])}
        for _ in range(layers)
    ]
    output_kernel = g.normal([d, v]) * 0.05  # the transposed token table, as generate keeps it
    steps = args.decode_steps

    @tf.function(jit_compile=True, autograph=False)
    def decode(x, weights, output_kernel):
        def body(i, x):
            for w in weights:
                qkv = tf.linalg.matmul(x, w["qkv"])
                q = tf.reshape(qkv[:, :d], [batch_size, h, 1, head_dim])
                scores = tf.linalg.matmul(q, w["keys"], transpose_b=True)           # [b, h, 1, positions]
                context = tf.linalg.matmul(scores, w["values"])                      # [b, h, 1, head_dim]
                x = x + tf.linalg.matmul(tf.reshape(context, [batch_size, d]), w["out"])
                x = x + tf.linalg.matmul(tf.linalg.matmul(x, w["ffn_in"]), w["ffn_out"])
            logits = tf.linalg.matmul(x, output_kernel)
            return i + 1, x * 1e-3 + logits[:, :d] * 1e-6  # the next step depends on this one's logits

        return tf.while_loop(lambda i, x: i < steps, body, (tf.constant(0), x))[1]

    x = g.normal([batch_size, d])
    seconds = median_call_s(lambda: decode(x, weights, output_kernel), [], max(5, args.repeats // 3))
    per_step_flops = layers * (2 * batch_size * (d * 3 * d + d * d + 2 * d * f) + 2 * 2 * batch_size * h * positions * head_dim) \
        + 2 * batch_size * d * v
    weight_bytes = 4 * (layers * (3 * d * d + d * d + 2 * d * f) + d * v)
    return {"seconds_per_step": seconds / steps, "flops_per_step": per_step_flops, "weight_bytes_per_step": weight_bytes,
            "weight_gb_per_s": weight_bytes / (seconds / steps) / 1e9}


# -- recorded runs ----------------------------------------------------------------------------


def latest_record(results_dir, benchmark, threads):
    """The newest run of `benchmark` in `results_dir` whose thread setting matches."""
    wanted = threads or "framework default"
    best = None
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        with open(path) as f:
            for run in json.load(f).get("runs", []):
                if run.get("benchmark") != benchmark:
                    continue
                run_threads = run.get("config", {}).get("threads", "framework default")
                if run_threads != wanted:
                    continue
                if best is None or run["timestamp"] > best["timestamp"]:
                    best = run
    return best


def best_median(contenders, prefix):
    medians = [(c["median_s"], label) for label, c in contenders.items() if label.startswith(prefix)]
    return min(medians) if medians else (None, None)


# -- the run ----------------------------------------------------------------------------------


def main():
    args = parse_args()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    env = common.environment()
    env["threads"] = args.threads or "framework default"
    print(common.machine_line(env))
    shape = dict(common.TINY)
    record = {"config": {**shape, "masked_positions": common.MASKED_POSITIONS, "precision": "float32",
                         "threads": env["threads"], "repeats": args.repeats, "part": args.part},
              "environment": env}
    lines = [f"Matrix products alone, float32, shared \"tiny\" shape; TensorFlow {tf.__version__}, "
             f"CPU threads: {env['threads']}. Floor = the products' time; reachable = peer step / floor, the "
             "highest ratio any float32 implementation could show against that recorded peer run.", ""]

    if args.part in ("train", "both"):
        peak, peak_rates = peak_rate(args, tf)
        record["peak"] = {"flops_per_s": peak, "by_shape": peak_rates}
        print(f"peak float32 product rate: {peak / 1e9:.0f} GFLOP/s ({', '.join(f'{k} {v / 1e9:.0f}' for k, v in peak_rates.items())})")
        recorded = latest_record(args.results_dir, "train_throughput", args.threads)
        rows, record["train"] = [], {}
        for recipe in TRAIN_RECIPES:
            floor = training_floor(recipe, shape, args, tf)
            floor["at_peak_s"] = floor["flops"] / peak
            entry = {"floor": floor}
            peer_s = ours_s = None
            if recorded:
                ours_s, ours_label = best_median(recorded["contenders"], f"zoo {recipe},")
                peer_s, peer_label = best_median(recorded["contenders"], KERAS_HUB[recipe])
                entry.update(recorded_run=recorded["timestamp"], ours_s=ours_s, ours_label=ours_label,
                             peer_s=peer_s, peer_label=peer_label)
            target = TARGETS.get(recipe)
            if peer_s:
                entry.update(current_ratio=peer_s / ours_s, reachable_ratio=peer_s / floor["floor_s"],
                             reachable_ratio_at_peak=peer_s / floor["at_peak_s"])
                if target:
                    # The step time the target needs, and what would be left of it for everything
                    # that is not a matrix product (softmax, norms, GELU, dropout, loss, AdamW, metrics).
                    entry["target_step_s"] = peer_s / target
                    entry["left_for_the_rest_s"] = peer_s / target - floor["floor_s"]
                    entry["left_for_the_rest_at_peak_s"] = peer_s / target - floor["at_peak_s"]
            record["train"][recipe] = entry
            print(f"{recipe}: {floor['flops'] / 1e9:.1f} GFLOP in {floor['products']} products, "
                  f"{floor['floor_s'] * 1e3:.0f} ms at their rates ({floor['gflops_per_s']:.0f} GFLOP/s), "
                  f"{floor['at_peak_s'] * 1e3:.0f} ms at peak"
                  + (f"; ours {ours_s * 1e3:.0f} ms, keras-hub {peer_s * 1e3:.0f} ms" if peer_s else ""))
            if target and peer_s:
                verdict = (f"{entry['target_step_s'] * 1e3:.0f} ms: {entry['left_for_the_rest_s'] * 1e3:.0f} "
                           f"({entry['left_for_the_rest_at_peak_s'] * 1e3:.0f} at peak) ms for the rest")
            else:
                verdict = "-"
            rows.append([
                recipe, f"{floor['flops'] / 1e9:.1f}",
                f"{floor['floor_s'] * 1e3:.0f} ({floor['gflops_per_s']:.0f})", f"{floor['at_peak_s'] * 1e3:.0f}",
                f"{ours_s * 1e3:.0f}" if ours_s else "-",
                f"{peer_s * 1e3:.0f}" if peer_s else "-",
                f"{entry['current_ratio']:.2f}x" if peer_s else "-",
                f"{entry['reachable_ratio']:.2f}x ({entry['reachable_ratio_at_peak']:.2f}x)" if peer_s else "-",
                f">= {target}x" if target else "-", verdict,
            ])
        lines += [f"Peak float32 product rate here: {peak / 1e9:.0f} GFLOP/s (best of "
                  f"{', '.join(peak_rates)}).", "",
                  "**Training step** (forward + backward products; optimiser, losses and elementwise work excluded)"
                  + (f", compared with the train_throughput run of {recorded['timestamp']} (best XLA setting of each side):"
                     if recorded else ": no recorded train_throughput run with these threads to compare with."), "",
                  common.markdown_table(["recipe", "GFLOP/step", "products ms (GFLOP/s)", "products ms at peak",
                                         "ours ms", "keras-hub ms", "ours/keras-hub now",
                                         "reachable (at peak)", "target", "target step: left for the rest"], rows), ""]
        kinds = []
        for recipe in TRAIN_RECIPES:
            for kind, k in record["train"][recipe]["floor"]["by_kind"].items():
                if k["seconds"] >= 0.001:
                    kinds.append([recipe, kind, f"{k['flops'] / 1e9:.2f}", f"{k['seconds'] * 1e3:.1f}",
                                  f"{k['flops'] / max(k['seconds'], 1e-9) / 1e9:.0f}"])
        lines += ["Where the floor goes (products taking 1 ms or more, summed over layers):", "",
                  common.markdown_table(["recipe", "product", "GFLOP", "ms", "GFLOP/s"], kinds), ""]

    if args.part in ("generation", "both"):
        recorded = latest_record(args.results_dir, "generation", args.threads)
        rows, record["generation"] = [], {}
        for batch_size in args.batch_sizes:
            floor = generation_floor(batch_size, shape, args, tf)
            entry = {"floor": floor}
            match = None
            if recorded:
                match = next((r for r in recorded["results"] if r["batch_size"] == batch_size), None)
            ours_s = peer_s = None
            if match:
                new_tokens = recorded["config"]["new_tokens"]
                ours_s = match["contenders"]["zoo gpt-clm"]["median_s"] / new_tokens
                peer_s = min(c["median_s"] for label, c in match["contenders"].items() if label.startswith("keras-hub")) / new_tokens
                entry.update(recorded_run=recorded["timestamp"], ours_s_per_step=ours_s, peer_s_per_step=peer_s,
                             reachable_ratio=peer_s / floor["seconds_per_step"], current_ratio=peer_s / ours_s)
            record["generation"][batch_size] = entry
            target = GENERATION_TARGET.get(batch_size)
            print(f"generation batch {batch_size}: floor {floor['seconds_per_step'] * 1e6:.0f} µs a decoding step "
                  f"({floor['weight_gb_per_s']:.0f} GB/s of weights)"
                  + (f", ours {ours_s * 1e6:.0f} µs, keras-hub {peer_s * 1e6:.0f}" if ours_s else ""))
            rows.append([
                batch_size, f"{floor['seconds_per_step'] * 1e6:.0f}", f"{floor['weight_gb_per_s']:.0f}",
                f"{ours_s * 1e6:.0f} ({floor['seconds_per_step'] / ours_s:.0%})" if ours_s else "-",
                f"{peer_s * 1e6:.0f}" if peer_s else "-",
                f"{entry['current_ratio']:.2f}x" if ours_s else "-",
                f"**{entry['reachable_ratio']:.2f}x**" if ours_s else "-",
                (f">= {target}x: " + ("reachable" if entry["reachable_ratio"] >= target else "**beyond the floor**"))
                if target and ours_s else "-",
            ])
        lines += [f"**Generation, one decoding step** (XLA loop of {args.decode_steps} steps, "
                  f"{args.cache_positions} cached positions; µs per decoding step, which makes one new token per row; "
                  "ours and keras-hub: a recorded call's median / its new tokens per row)"
                  + (f", compared with the generation run of {recorded['timestamp']} (keras-hub's best setting):"
                     if recorded else ": no recorded generation run with these threads to compare with."), "",
                  common.markdown_table(["batch", "floor µs", "weights GB/s", "ours µs (floor share)", "keras-hub µs",
                                         "ours/keras-hub now", "reachable", "target"], rows), ""]

    env["load_average_at_end"] = common.load_average()
    common.save_results(args, "roofline", record, "\n".join(lines))


if __name__ == "__main__":
    main()
