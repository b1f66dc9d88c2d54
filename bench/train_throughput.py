"""Training throughput (tokens/s) of the zoo's recipes against keras-hub and Hugging Face/torch.

Every contender trains on the shared "tiny" shape (vocabulary 8192, 2 layers,
hidden 128, 2 heads, intermediate 512, sequence 128, batch 32 = 4,096 tokens a step, float32) on
the same synthetic token ids, with XLA on and off for the Keras contenders:

  recipe      zoo model (recipes.get(...).build_model)   keras-hub peer        torch peer (--peers torch)
  bert-mlm    MaskedLM, 20 masked positions gathered     BertMaskedLM          BertForMaskedLM, gathered / full
  gpt-clm     CausalLM                                   GPT2CausalLM          GPT2LMHeadModel
  classifier  TextClassifier (4 classes)                 BertTextClassifier    BertForSequenceClassification

A step is a full optimiser step: `model.train_on_batch` (the function `fit` runs each step:
forward, loss, gradients, AdamW with global-norm clipping, metric updates). The zoo models are
compiled exactly as their recipe compiles them; the keras-hub peers get the same optimiser and
loss and keras-hub's default metric (accuracy); the torch peers run AdamW with clipping too.

Protocol: every contender is built and warmed up (its first, compiling call is timed apart),
then all contenders run `--steps-per-round` timed steps in turn, round after round (A B C A B C
...), in ONE process for the Keras contenders; the torch contenders live in a second process
(`bench/torch_peer.py --serve`) that is driven in the same rotation, so only one of the two
computes at any moment. Interleaving spreads the noise of a shared machine over everyone. The
result is the median step time per contender, tokens/s = 4,096 / median, and the ratios
ours/peer. Targets (reported, never asserted): bert-mlm >= 1.0x HF gathered and >= 1.7x
keras-hub; gpt-clm >= 1.5x keras-hub GPT2CausalLM.

Example:
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/train_throughput.py                 # keras-hub peers
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/train_throughput.py --peers keras-hub,torch
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/train_throughput.py --recipes gpt-clm --rounds 2 --no-save
"""

import argparse
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import torch_peer  # noqa: E402 - only its venv helper and names; torch is imported in the subprocess

RECIPES = ("bert-mlm", "gpt-clm", "classifier")
BATCH_KIND = {"bert-mlm": "mlm", "gpt-clm": "clm", "classifier": "classify"}
KERAS_HUB_NAMES = {"bert-mlm": "BertMaskedLM", "gpt-clm": "GPT2CausalLM", "classifier": "BertTextClassifier"}
TORCH_PEERS = {
    "bert-mlm": ["hf-bert-mlm-gathered", "hf-bert-mlm-full"],
    "gpt-clm": ["hf-gpt2-clm"],
    "classifier": ["hf-bert-classifier"],
}
# (recipe, peer label, minimum ratio ours/peer)
TARGETS = [
    ("bert-mlm", "torch hf-bert-mlm-gathered", 1.0),
    ("bert-mlm", "keras-hub BertMaskedLM", 1.7),
    ("gpt-clm", "keras-hub GPT2CausalLM", 1.5),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated zoo recipes (default: %(default)s)")
    parser.add_argument("--peers", default="keras-hub",
                        help="comma-separated peers: keras-hub, torch, or 'none' (default: %(default)s). "
                             "torch creates bench/.venv-torch on first use (pip install torch==2.13.0 transformers).")
    parser.add_argument("--xla", default="on,off", help="XLA settings of the Keras contenders: on, off or on,off (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--steps-per-round", type=int, default=3,
                        help="timed steps per contender per round; rounds x this >= 15 for the protocol (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=common.TINY["batch_size"])
    parser.add_argument("--sequence-length", type=int, default=common.TINY["sequence_length"])
    parser.add_argument("--masked-positions", type=int, default=common.MASKED_POSITIONS)
    parser.add_argument("--torch-venv", default=torch_peer.DEFAULT_VENV, help="virtual environment of the torch peer (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of every contender: TensorFlow's intra- and inter-op pools and torch.set_num_threads "
                             "(default 0: each framework's own choice). 1 makes a machine shared with other work fairer: "
                             "torch's OpenMP loops slow down badly when their threads are descheduled")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    args.recipes = [r for r in args.recipes.split(",") if r]
    args.peers = [p for p in args.peers.split(",") if p and p != "none"]
    args.xla = [setting == "on" for setting in args.xla.split(",")]
    for recipe in args.recipes:
        if recipe not in RECIPES:
            parser.error(f"unknown recipe {recipe!r}; expected some of {', '.join(RECIPES)}")
    for peer in args.peers:
        if peer not in ("keras-hub", "torch"):
            parser.error(f"unknown peer {peer!r}; expected keras-hub, torch or none")
    return args


def shape(args):
    return {**common.TINY, "batch_size": args.batch_size, "sequence_length": args.sequence_length}


# -- Keras contenders -------------------------------------------------------------------------


def keras_inputs(kind, arrays, with_segments=False):
    """(x, y, sample_weight) as TensorFlow tensors, converted once (not on every step)."""
    import tensorflow as tf

    if kind == "clm":
        x = {"token_ids": arrays["token_ids"]}
    else:
        x = {key: arrays[key] for key in ("token_ids", "padding_mask", "mask_positions") if key in arrays}
    if with_segments:
        x["segment_ids"] = arrays["token_ids"] * 0
    x = {key: tf.constant(value) for key, value in x.items()}
    sample_weight = tf.constant(arrays["sample_weight"]) if "sample_weight" in arrays else None
    return x, tf.constant(arrays["labels"]), sample_weight


def build_zoo(recipe_name, xla, args):
    import recipes

    s = shape(args)
    overrides = {key: s[key] for key in ("vocabulary_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim", "sequence_length")}
    if recipe_name == "classifier":
        overrides["num_classes"] = common.NUM_CLASSES
    recipe = recipes.get(recipe_name, preset="tiny", **overrides)
    model = recipe.build_model(jit_compile=xla)
    x, y, sample_weight = keras_inputs(BATCH_KIND[recipe_name], batches(recipe_name, args))
    if recipe_name == "gpt-clm":
        x = x["token_ids"]  # CausalLM takes the ids tensor itself
    return model, (x, y, sample_weight), recipe


def build_keras_hub(recipe_name, xla, args, recipe):
    """The keras-hub task of the same shape, built from a config (no preset download)."""
    import keras
    import keras_hub

    s = shape(args)
    keras.utils.set_random_seed(0)
    common_shape = dict(
        vocabulary_size=s["vocabulary_size"], num_layers=s["num_layers"], num_heads=s["num_heads"],
        hidden_dim=s["hidden_dim"], intermediate_dim=s["intermediate_dim"], max_sequence_length=s["sequence_length"],
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = recipe.make_optimizer()  # the same AdamW, schedule and clipping as the zoo model
    accuracy = [keras.metrics.SparseCategoricalAccuracy()]
    if recipe_name == "gpt-clm":
        backbone = keras_hub.models.GPT2Backbone(dropout=recipe.config.dropout, **common_shape)
        model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=accuracy, jit_compile=xla)
        import tensorflow as tf

        arrays = batches(recipe_name, args)
        x = {"token_ids": tf.constant(arrays["token_ids"]), "padding_mask": tf.ones(arrays["token_ids"].shape, "bool")}
        y = tf.constant(arrays["labels"])
        sample_weight = tf.ones(y.shape, "float32")  # what keras-hub's preprocessor yields: the padding mask
        return model, (x, y, sample_weight)
    backbone = keras_hub.models.BertBackbone(dropout=recipe.config.dropout, **common_shape)
    if recipe_name == "bert-mlm":
        model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=accuracy, jit_compile=xla)
    else:
        model = keras_hub.models.BertTextClassifier(backbone, num_classes=common.NUM_CLASSES, preprocessor=None)
        model.compile(optimizer=optimizer, loss=loss, metrics=accuracy, jit_compile=xla)
    return model, keras_inputs(BATCH_KIND[recipe_name], batches(recipe_name, args), with_segments=True)


def batches(recipe_name, args):
    s = shape(args)
    return common.synthetic_batches(
        BATCH_KIND[recipe_name], s["batch_size"], s["sequence_length"], s["vocabulary_size"],
        masked_positions=args.masked_positions,
    )


def keras_runner(model, data):
    x, y, sample_weight = data

    def run(steps):
        times = []
        for _ in range(steps):
            with common.Timer() as timer:
                model.train_on_batch(x, y, sample_weight=sample_weight)  # returns numpy logs: the step is done
            times.append(timer.both)
        return times

    return run


def count_parameters(model):
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


# -- torch contenders (a subprocess) ------------------------------------------------------------


class TorchPeer:
    """Drives `torch_peer.py --serve` in the torch virtual environment."""

    def __init__(self, args):
        python = torch_peer.ensure_venv(args.torch_venv)
        s = shape(args)
        command = [
            python, os.path.join(common.BENCH_DIR, "torch_peer.py"), "--serve",
            "--vocabulary-size", str(s["vocabulary_size"]), "--sequence-length", str(s["sequence_length"]),
            "--batch-size", str(s["batch_size"]), "--num-layers", str(s["num_layers"]), "--hidden-dim", str(s["hidden_dim"]),
            "--num-heads", str(s["num_heads"]), "--intermediate-dim", str(s["intermediate_dim"]),
            "--masked-positions", str(args.masked_positions), "--threads", str(args.threads),
        ]
        self.versions = json.loads(
            subprocess.run(command[:2] + ["--versions", "--threads", str(args.threads)], capture_output=True, text=True, check=True).stdout
        )
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def request(self, **message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"The torch peer exited (code {self.process.poll()}); see its messages above.")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"The torch peer failed on {message}: {reply['error']}")
        return reply

    def runner(self, name):
        return lambda steps: self.request(cmd="run", contender=name, steps=steps)["times"]

    def close(self):
        if self.process.poll() is None:
            self.request_quit()

    def request_quit(self):
        try:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


# -- the run ---------------------------------------------------------------------------------


def main():
    args = parse_args()
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)  # before TensorFlow initialises
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    env = common.environment()
    env["threads"] = args.threads or "framework default"
    print(common.machine_line(env))
    tokens_per_step = args.batch_size * args.sequence_length
    contenders = {}  # label -> metadata
    runners = {}
    torch = None
    try:
        for recipe_name in args.recipes:
            for xla in args.xla:
                setting = "XLA on" if xla else "XLA off"
                label = f"zoo {recipe_name}, {setting}"
                print(f"Building {label}...")
                model, data, recipe = build_zoo(recipe_name, xla, args)
                runners[label] = keras_runner(model, data)
                contenders[label] = {"recipe": recipe_name, "framework": "zoo", "xla": xla, "model": type(model).__name__,
                                     "parameters": count_parameters(model)}
                if "keras-hub" in args.peers:
                    label = f"keras-hub {KERAS_HUB_NAMES[recipe_name]}, {setting}"
                    print(f"Building {label}...")
                    model, data = build_keras_hub(recipe_name, xla, args, recipe)
                    runners[label] = keras_runner(model, data)
                    contenders[label] = {"recipe": recipe_name, "framework": "keras-hub", "xla": xla,
                                         "model": KERAS_HUB_NAMES[recipe_name], "parameters": count_parameters(model)}
            if "torch" in args.peers:
                if torch is None:
                    torch = TorchPeer(args)
                    env["versions"].update(torch.versions)
                for name in TORCH_PEERS[recipe_name]:
                    label = f"torch {name}"
                    print(f"Building {label}...")
                    reply = torch.request(cmd="setup", contender=name)
                    runners[label] = torch.runner(name)
                    contenders[label] = {"recipe": recipe_name, "framework": "torch", "xla": None, "model": name,
                                         "first_call_s": reply["first_step_s"]}

        print("Warm-up: first (compiling) call, then", args.warmup, "steps each")
        for label, run in runners.items():
            if contenders[label]["framework"] != "torch":
                contenders[label]["first_call_s"] = run(1)[0][0]
            run(args.warmup)
            print(f"  {label}: first call {contenders[label]['first_call_s']:.2f} s")

        print(f"Timing: {args.rounds} interleaved rounds x {args.steps_per_round} steps")
        times = common.interleave(runners, args.rounds, args.steps_per_round)
    finally:
        if torch is not None:
            torch.close()

    for label, step_times in times.items():
        contenders[label].update(common.summarize(step_times, tokens_per_step))
    env["load_average_at_end"] = common.load_average()
    ratios = compute_ratios(contenders)
    targets = evaluate_targets(contenders)
    record = {
        "config": {**shape(args), "masked_positions": args.masked_positions, "precision": "float32",
                   "rounds": args.rounds, "steps_per_round": args.steps_per_round, "warmup": args.warmup,
                   "peers": args.peers, "threads": args.threads or "framework default", "step": "model.train_on_batch (Keras); zero_grad/forward/backward/clip/AdamW (torch)"},
        "environment": env,
        "contenders": contenders,
        "ratios": ratios,
        "targets": targets,
    }
    common.save_results(args, "train_throughput", record, markdown(record))


def compute_ratios(contenders):
    """ours/peer for every zoo contender against every peer of the same recipe."""
    rows = []
    for ours, o in contenders.items():
        if o["framework"] != "zoo":
            continue
        for peer, p in contenders.items():
            if p["framework"] == "zoo" or p["recipe"] != o["recipe"]:
                continue
            rows.append({"recipe": o["recipe"], "ours": ours, "peer": peer, "ratio": o["tokens_per_s"] / p["tokens_per_s"],
                         "cpu_time_ratio": o["tokens_per_cpu_s"] / p["tokens_per_cpu_s"]})
    return rows


def evaluate_targets(contenders):
    """Each target at matched settings (XLA on vs XLA on; torch has no XLA) and best vs best."""
    results = []
    for recipe_name, peer_prefix, minimum in TARGETS:
        ours = {c["xla"]: c for c in contenders.values() if c["framework"] == "zoo" and c["recipe"] == recipe_name}
        peers = {c["xla"]: c for label, c in contenders.items() if label.startswith(peer_prefix)}
        if not ours or not peers:
            continue
        best_ours = max(c["tokens_per_s"] for c in ours.values())
        best_peer = max(c["tokens_per_s"] for c in peers.values())
        matched = {}
        for xla in (True, False):
            if xla in ours and (xla in peers or None in peers):
                matched["XLA on" if xla else "XLA off"] = ours[xla]["tokens_per_s"] / peers.get(xla, peers.get(None))["tokens_per_s"]
        results.append({
            "recipe": recipe_name, "peer": peer_prefix, "target": minimum, "matched": matched,
            "best_vs_best": best_ours / best_peer, "met": best_ours / best_peer >= minimum,
        })
    return results


def markdown(record):
    c = record["config"]
    contenders = record["contenders"]
    lines = [
        f"Training throughput, shape: vocabulary {c['vocabulary_size']}, {c['num_layers']} layers, hidden {c['hidden_dim']}, "
        f"{c['num_heads']} heads, intermediate {c['intermediate_dim']}, sequence {c['sequence_length']}, batch {c['batch_size']} "
        f"({c['batch_size'] * c['sequence_length']:,} tokens a step), {c['precision']}, {c['masked_positions']} masked positions (MLM). "
        f"Median of {c['rounds'] * c['steps_per_round']} steps per contender, {c['rounds']} interleaved rounds, after warm-up. "
        f"CPU threads per contender: {c.get('threads', 'framework default')}.",
        "",
        common.machine_line(record["environment"]),
        "",
        common.markdown_table(
            ["contender", "parameters", "tokens/s (median)", "step ms p25-p75", "tokens per CPU-s", "first call s"],
            [
                [label, common.fmt(m.get("parameters", 0)) if m.get("parameters") else "-", common.fmt(m["tokens_per_s"]),
                 f"{m['p25_s'] * 1000:.0f}-{m['p75_s'] * 1000:.0f}", common.fmt(m["tokens_per_cpu_s"]), f"{m['first_call_s']:.1f}"]
                for label, m in contenders.items()
            ],
        ),
        "",
        "Ratios ours/peer (> 1: the zoo is faster). The first is the protocol's (median wall time); the second "
        "compares CPU time of the process per step, which a machine shared with other work distorts less:",
        "",
        common.markdown_table(
            ["recipe", "ours", "peer", "ours/peer", "ours/peer, CPU time"],
            [[r["recipe"], r["ours"], r["peer"], f"{r['ratio']:.2f}x", f"{r['cpu_time_ratio']:.2f}x"] for r in record["ratios"]],
        ),
    ]
    if record["targets"]:
        lines += [
            "",
            "Targets (best setting of each vs best; matched XLA settings in brackets):",
            "",
            common.markdown_table(
                ["recipe", "vs", "target", "best vs best", "matched", "met"],
                [
                    [t["recipe"], t["peer"], f">= {t['target']}x", f"{t['best_vs_best']:.2f}x",
                     ", ".join(f"{k}: {v:.2f}x" for k, v in t["matched"].items()), "yes" if t["met"] else "**no**"]
                    for t in record["targets"]
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
