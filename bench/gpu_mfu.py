"""GPU training throughput and MFU of gpt-clm "small" (the GPT-2 124M shape) under JAX, bf16.

The model is the recipe's own (`recipes.get("gpt-clm", preset="small").build_model(jit_compile=True)`:
12 layers, hidden 768, 12 heads, context 1024, vocabulary 50257, AdamW with clipping, the
recipe's metrics) under `keras.config.set_dtype_policy("mixed_bfloat16")` and
`KERAS_BACKEND=jax`, trained with `model.train_on_batch` on one repeated batch of synthetic ids.

It needs only keras, jax (a CUDA build on a GPU machine), numpy and the project: TensorFlow is
blocked from being imported (Keras would otherwise import it, when installed, from
`keras.utils.set_random_seed`, which `Recipe.build_model` calls), and the result records that
it was not.

MFU uses the PaLM formula (Chowdhery et al. 2022, appendix B): FLOPs/token = 6 N + 12 L H Q T, with N the parameter
count without the position embedding (as nanoGPT counts: the token embedding is also the output
projection, so its matmul is real work), L layers, H heads, Q head size, T sequence length;
MFU = tokens/s x FLOPs/token / peak. The peak is `--peak-tflops` (default 989: H100 SXM dense
bf16; A100 is 312, H200 989).

Example (GPU machine):
  KERAS_BACKEND=jax python bench/gpu_mfu.py
  KERAS_BACKEND=jax python bench/gpu_mfu.py --batch-size 16 --steps 30
Check on a CPU (tiny shape: 2 layers, hidden 128, 2 heads, sequence 128, a few steps):
  KERAS_BACKEND=jax .venv/bin/python bench/gpu_mfu.py --tiny --no-save
"""

import argparse
import importlib.abc
import os
import sys

if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != "jax":
    raise SystemExit("bench/gpu_mfu.py must run with the JAX backend: start it with KERAS_BACKEND=jax.")
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402 - standard library only


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes `import tensorflow` fail, so Keras' lazy TensorFlow module reports it unavailable."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("bench/gpu_mfu.py runs without TensorFlow")
        return None


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="gpt-clm preset (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="a CPU check: the tiny preset (2 layers, hidden 128, 2 heads, sequence 128), batch 8, 3 steps")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's (small: 8)")
    parser.add_argument("--sequence-length", type=int, default=None, help="default: the preset's (small: 1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one (default: %(default)s)")
    parser.add_argument("--dtype-policy", default="mixed_bfloat16", help="Keras dtype policy (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the accelerator's dense peak for that precision, TFLOP/s (default: %(default)s, H100 SXM bf16)")
    parser.add_argument("--allow-tensorflow", action="store_true", help="do not block `import tensorflow` (for comparison)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    if args.tiny:
        args.preset = "tiny"
        args.batch_size = args.batch_size or 8
        args.steps = min(args.steps, 3)
        args.warmup = min(args.warmup, 1)
    return args


def flops_per_token(parameters, num_layers, num_heads, head_dim, sequence_length):
    """PaLM's training FLOPs per token: 6 N for the weights, 12 L H Q T for attention."""
    return 6 * parameters + 12 * num_layers * num_heads * head_dim * sequence_length


def main():
    args = parse_args()
    if not args.allow_tensorflow:
        sys.meta_path.insert(0, _NoTensorFlow())
    import jax
    import keras
    import numpy as np

    import recipes

    keras.config.set_dtype_policy(args.dtype_policy)
    overrides = {}
    if args.sequence_length:
        overrides["sequence_length"] = args.sequence_length
    recipe = recipes.get("gpt-clm", preset=args.preset, **overrides)
    c = recipe.config
    batch_size = args.batch_size or c.batch_size
    env = common.environment(extra_packages=("keras", "jax", "jaxlib", "numpy"))
    device = jax.devices()[0]
    env["device"] = {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()}
    print(common.machine_line(env))
    print(f"JAX device: {device.platform} {device.device_kind} x{jax.device_count()}")
    if device.platform == "cpu":
        print("No GPU available: running on the CPU. Tokens/s are CPU numbers and the MFU against "
              f"{args.peak_tflops} TFLOP/s is meaningless.")

    model = recipe.build_model(jit_compile=True)
    decoder = model.decoder
    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    position_parameters = sum(int(np.prod(v.shape)) for v in decoder.embeddings.trainable_variables
                              if "position" in v.path)
    n = parameters - position_parameters
    per_token = flops_per_token(n, c.num_layers, c.num_heads, c.hidden_dim // c.num_heads, c.sequence_length)

    arrays = common.synthetic_batches("clm", batch_size, c.sequence_length, c.vocabulary_size)
    x, y = jax.device_put(arrays["token_ids"]), jax.device_put(arrays["labels"])
    timings = []
    with common.Timer() as first:
        logs = model.train_on_batch(x, y, return_dict=True)  # python floats: the step has finished
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    for _ in range(args.steps):
        with common.Timer() as timer:
            logs = model.train_on_batch(x, y, return_dict=True)
        timings.append(timer.seconds)
    tokens_per_step = batch_size * c.sequence_length
    summary = common.summarize(timings, tokens_per_step)
    achieved = summary["tokens_per_s"] * per_token
    mfu = achieved / (args.peak_tflops * 1e12)
    tensorflow_imported = any(name == "tensorflow" or name.startswith("tensorflow.") for name in sys.modules)
    env["load_average_at_end"] = common.load_average()
    record = {
        "config": {"preset": args.preset, "num_layers": c.num_layers, "hidden_dim": c.hidden_dim, "num_heads": c.num_heads,
                   "intermediate_dim": c.intermediate_dim, "vocabulary_size": c.vocabulary_size,
                   "sequence_length": c.sequence_length, "batch_size": batch_size, "dtype_policy": args.dtype_policy,
                   "xla": True, "steps": args.steps, "warmup": args.warmup, "peak_tflops": args.peak_tflops},
        "environment": env,
        "parameters": parameters,
        "parameters_without_position_embedding": n,
        "flops_per_token": per_token,
        "first_call_s": first.seconds,
        **summary,
        "achieved_tflops": achieved / 1e12,
        "mfu": mfu,
        "final_loss": float(logs["loss"]),
        "tensorflow_imported": tensorflow_imported,
    }
    if tensorflow_imported and not args.allow_tensorflow:
        raise SystemExit("FAIL: TensorFlow was imported although it was blocked.")
    common.save_results(args, "gpu_mfu", record, markdown(record))


def markdown(record):
    c = record["config"]
    device = record["environment"]["device"]
    return "\n".join([
        f"gpt-clm `{c['preset']}` ({c['num_layers']} layers, hidden {c['hidden_dim']}, {c['num_heads']} heads, "
        f"vocabulary {c['vocabulary_size']}, sequence {c['sequence_length']}), batch {c['batch_size']}, {c['dtype_policy']}, "
        f"JAX + XLA, median of {c['steps']} steps after {c['warmup']} warm-up steps.",
        "",
        f"Device: {device['platform']} {device['kind']} x{device['count']}. TensorFlow imported: {record['tensorflow_imported']}.",
        "",
        common.markdown_table(
            ["parameters (N, no position emb.)", "FLOPs/token", "tokens/s", "step ms", "TFLOP/s", "peak", "MFU", "first call s"],
            [[common.fmt(record["parameters_without_position_embedding"]), f"{record['flops_per_token']:.3e}",
              common.fmt(record["tokens_per_s"]), f"{record['median_s'] * 1000:.1f}", f"{record['achieved_tflops']:.2f}",
              f"{c['peak_tflops']:.0f}", f"{record['mfu'] * 100:.1f}%", f"{record['first_call_s']:.1f}"]],
        ),
    ]) + "\n"


if __name__ == "__main__":
    main()
