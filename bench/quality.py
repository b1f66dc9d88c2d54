"""Training quality at an equal budget: the zoo's gpt-clm and bert-mlm against keras-hub's
GPT2CausalLM and BertMaskedLM of the same shape.

Every contender of a recipe sees the same thing: the recipe's tokenizer (trained on the
standard library), the very same training batches in the same order (drawn once from the
recipe's tf.data pipeline, masks included, and kept as arrays), the same AdamW, warm-up, decay
and clipping (`recipe.make_optimizer`), the same number of steps. Only the model code and its
initialisation differ; each seed changes the initialisation only. The validation loss is the
mean cross-entropy per predicted token (nats) over fixed validation batches, computed here
from each model's logits, the same way for all.

Contenders:
    zoo              the recipe's model as shipped (per-weight seeds; GPT-2's or BERT's scales)
    keras-hub        GPT2Backbone + GPT2CausalLM, or BertBackbone + BertMaskedLM, same shape and dropout
    zoo-shared-init  the zoo's model initialised as before the per-weight fix: one glorot-uniform
                     initializer shared by every block (every block started with equal weights)

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/quality.py                  # 2 recipes x 3 contenders x 3 seeds
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/quality.py --recipes gpt-clm --seeds 0 --steps 50 --no-save

Results go to bench/results/ (JSON + markdown). Target (issue: initialisation): the zoo's mean
final validation loss within 0.02 nats of keras-hub's, or lower.
"""

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

CONTENDERS = ("zoo", "keras-hub", "zoo-shared-init")
RECIPES = ("gpt-clm", "bert-mlm")
TARGET_NATS = 0.02


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, from %(default)s")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated, from %(default)s")
    parser.add_argument("--seeds", default="0,1,2", help="initialisation seeds (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of 32 x 128 tokens (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=50, help="validation loss every N steps, for the curve")
    parser.add_argument("--validation-batches", type=int, default=16, help="fixed validation batches (default: %(default)s)")
    parser.add_argument("--data", default="stdlib", help="training corpus (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra/inter-op threads (0: its default)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    args.recipes = [r for r in args.recipes.split(",") if r]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for value, valid, what in ((args.recipes, RECIPES, "recipe"), (args.contenders, CONTENDERS, "contender")):
        unknown = sorted(set(value) - set(valid))
        if unknown:
            parser.error(f"unknown {what} {', '.join(unknown)}; expected some of {', '.join(valid)}")
    return args


# -- data: drawn once, shared by every contender ------------------------------------------------


def fixed_batches(recipe, dataset, count):
    """`count` batches of a tf.data pipeline as numpy arrays: a list of (x, y, sample_weight)."""
    import numpy as np

    batches = []
    for element in dataset.take(count):
        if recipe.name == "gpt-clm":
            ids, labels = (np.asarray(t) for t in element)
            batches.append(({"token_ids": ids}, labels, np.ones(labels.shape, "float32")))
        else:
            x, y, weight = element
            batches.append(({k: np.asarray(v) for k, v in x.items()}, np.asarray(y), np.asarray(weight)))
    if len(batches) < count:
        raise SystemExit(f"{recipe.name}: the data gave {len(batches)} batches, {count} needed.")
    return batches


def stack(batches):
    import numpy as np

    x = {key: np.concatenate([b[0][key] for b in batches]) for key in batches[0][0]}
    return x, np.concatenate([b[1] for b in batches]), np.concatenate([b[2] for b in batches])


# -- contenders ---------------------------------------------------------------------------------


@contextlib.contextmanager
def shared_initializers():
    """The initialisation before the per-weight fix: clones keep their seed, so equal shapes draw equal values."""
    from zoo.layers import initializers

    original = initializers.derive_seed
    initializers.derive_seed = lambda seed, name: seed
    try:
        yield
    finally:
        initializers.derive_seed = original


def build(contender, recipe, total_steps):
    """A compiled model and a function mapping a batch's x to the model's float32 logits."""
    import keras

    if contender in ("zoo", "zoo-shared-init"):
        if contender == "zoo-shared-init":
            recipe.kernel_initializer = lambda: keras.initializers.GlorotUniform(seed=recipe.config.seed)
            recipe.residual_kernel_initializer = lambda: None
            with shared_initializers():
                model = recipe.build_model(total_steps=total_steps, jit_compile=False)
        else:
            model = recipe.build_model(total_steps=total_steps, jit_compile=False)
        if recipe.name == "gpt-clm":
            return model, (lambda x: x["token_ids"]), (lambda x: model(x["token_ids"], training=False))
        return model, (lambda x: x), (lambda x: model(x, training=False))

    import keras_hub

    c = recipe.config
    keras.utils.set_random_seed(c.seed)
    shape = dict(
        vocabulary_size=recipe.model_vocabulary_size, num_layers=c.num_layers, num_heads=c.num_heads,
        hidden_dim=c.hidden_dim, intermediate_dim=c.intermediate_dim, max_sequence_length=c.sequence_length,
        dropout=c.dropout,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if recipe.name == "gpt-clm":
        model = keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(**shape), preprocessor=None)

        def inputs(x):
            return {"token_ids": x["token_ids"], "padding_mask": x["token_ids"] * 0 + 1}
    else:
        model = keras_hub.models.BertMaskedLM(
            keras_hub.models.BertBackbone(num_segments=c.num_segments, **shape), preprocessor=None
        )

        def inputs(x):
            return {**x, "segment_ids": x["token_ids"] * 0}

    model.compile(optimizer=recipe.make_optimizer(total_steps), loss=loss, jit_compile=False)
    return model, inputs, (lambda x: model(inputs(x), training=False))


def validation_loss(logits_of, batches):
    """Mean cross-entropy (nats) per weighted target token, from the logits."""
    import numpy as np

    total, count = 0.0, 0.0
    for x, y, weight in batches:
        logits = np.asarray(logits_of(x), dtype=np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=-1))
        target = np.take_along_axis(logits, y[..., None].astype(np.int64), axis=-1)[..., 0]
        total += float(((log_norm - target) * weight).sum())
        count += float(weight.sum())
    return total / count


def run_one(args, recipe_name, contender, seed, train, validation):
    import recipes

    recipe = recipes.get(recipe_name, preset="tiny", seed=seed)
    recipe.tokenizer = train["tokenizer"]
    model, inputs, logits_of = build(contender, recipe, args.steps)
    x, y, weight = train["arrays"]
    batch = recipe.config.batch_size
    curve = []
    started = time.perf_counter()
    for start in range(0, args.steps, args.eval_every):
        stop = min(start + args.eval_every, args.steps)
        part = slice(start * batch, stop * batch)
        model.fit(
            inputs({k: v[part] for k, v in x.items()}), y[part], sample_weight=weight[part], batch_size=batch,
            shuffle=False, epochs=1, verbose=0,
        )
        curve.append((stop, validation_loss(logits_of, validation)))
    seconds = time.perf_counter() - started
    print(f"  {recipe_name} {contender} seed {seed}: " + " ".join(f"{s}:{v:.4f}" for s, v in curve) + f" ({seconds:.0f} s)",
          flush=True)
    return {"seed": seed, "curve": curve, "final_validation_loss": curve[-1][1], "train_seconds": seconds}


def summary(runs):
    finals = [run["final_validation_loss"] for run in runs]
    return {
        "mean": statistics.mean(finals),
        "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "min": min(finals),
        "max": max(finals),
        "mean_curve": [
            (step, statistics.mean(run["curve"][i][1] for run in runs)) for i, (step, _) in enumerate(runs[0]["curve"])
        ],
    }


def markdown(record):
    lines = []
    for recipe_name, contenders in record["results"].items():
        rows = []
        for name, result in contenders.items():
            s = result["summary"]
            per_seed = ", ".join(f"{run['final_validation_loss']:.4f}" for run in result["runs"])
            curve = " ".join(f"{v:.3f}" for _, v in s["mean_curve"])
            rows.append([name, f"**{s['mean']:.4f}** ± {s['std']:.4f}", per_seed, curve])
        steps = " ".join(str(step) for step, _ in next(iter(contenders.values()))["summary"]["mean_curve"])
        lines.append(f"### {recipe_name}: validation loss (nats per token) after {record['steps']} steps\n")
        lines.append(common.markdown_table(
            ["contender", "final, mean ± std", "per seed", f"mean curve at steps {steps}"], rows))
        verdict = record["targets"].get(recipe_name)
        lines.append(f"\n{verdict}\n" if verdict else "")
    lines.append(common.machine_line(record["environment"]))
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import recipes

    environment = common.environment()
    results, targets = {}, {}
    for recipe_name in args.recipes:
        data_recipe = recipes.get(recipe_name, preset="tiny", seed=0)
        print(f"{recipe_name}: drawing {args.steps} training and {args.validation_batches} validation batches", flush=True)
        (train_set,) = data_recipe.datasets(args.data, splits=("train",), repeat=True)
        (validation_set,) = data_recipe.datasets(args.data, splits=("validation",), repeat=True)
        train = {"tokenizer": data_recipe.tokenizer, "arrays": stack(fixed_batches(data_recipe, train_set, args.steps))}
        validation = fixed_batches(data_recipe, validation_set, args.validation_batches)
        results[recipe_name] = {}
        for seed in args.seeds:
            for contender in args.contenders:  # interleaved, as every benchmark here
                runs = results[recipe_name].setdefault(contender, {"runs": []})["runs"]
                runs.append(run_one(args, recipe_name, contender, seed, train, validation))
        for contender in results[recipe_name].values():
            contender["summary"] = summary(contender["runs"])
        if "zoo" in results[recipe_name] and "keras-hub" in results[recipe_name]:
            gap = results[recipe_name]["zoo"]["summary"]["mean"] - results[recipe_name]["keras-hub"]["summary"]["mean"]
            met = "met" if gap <= TARGET_NATS else "missed"
            targets[recipe_name] = (
                f"zoo - keras-hub: {gap:+.4f} nats (target <= +{TARGET_NATS}: **{met}**)."
            )
    record = {
        "steps": args.steps, "batch_size": 32, "sequence_length": 128, "seeds": args.seeds, "data": args.data,
        "threads": args.threads, "results": results, "targets": targets, "environment": environment,
    }
    common.save_results(args, "quality", record, markdown(record))


if __name__ == "__main__":
    main()
