"""Generation speed (new tokens/s) of the zoo's gpt-clm against keras-hub's GPT2CausalLM.generate.

Both models have the shared "tiny" shape (vocabulary 8192, 2 layers, hidden 128, 2 heads,
intermediate 512, float32) except the context: 256 positions instead of 128, because a prompt of
16 tokens plus 128 new ones needs 144. Prompts are synthetic token ids; decoding is greedy for
both (keras-hub compiled with `sampler="greedy"`, the zoo with temperature 0) and never stops
early (no end token), so both produce exactly `--new-tokens` tokens per row.

- zoo: `model.generate(prompts, max_new_tokens=128)`. One tf.function per (batch, buffer) shape;
  the buffer is rounded up to a power of two (here 256). It is compiled on the first call; the
  script checks that later calls do not trace again (`model.generate_traces` unchanged) and
  fails loudly if they do.
- keras-hub: `model.generate({"token_ids", "padding_mask"}, stop_token_ids=None)` with
  `preprocessor=None`: a buffer of exactly prompt + new tokens (144), right-padded, with the
  padding mask true over the prompt. keras-hub compiles `generate_step` as a tf.function with
  the model's `jit_compile`: it runs with XLA on and off (`--keras-hub-xla`).

Protocol: for each batch size, the first call of each contender (trace + compile + run) is timed
apart, then the second call (reported: it shows whether a contender recompiles), then
`--rounds` interleaved calls (A B A B ...). new tokens/s = batch x new tokens / median call time.

Example:
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/generation.py
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/generation.py --batch-sizes 1 --rounds 3 --no-save
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

ZOO = "zoo gpt-clm"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--prompt-length", type=int, default=16, help="tokens per prompt (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row (default: %(default)s)")
    parser.add_argument("--sequence-length", type=int, default=256,
                        help="context of both models; must exceed prompt + new tokens (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed calls per contender (default: %(default)s)")
    parser.add_argument("--keras-hub-xla", default="on,off", help="keras-hub generate with XLA on, off or both; 'none' skips keras-hub (default: %(default)s)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.keras_hub_xla = [] if args.keras_hub_xla == "none" else [s == "on" for s in args.keras_hub_xla.split(",")]
    if args.prompt_length + args.new_tokens > args.sequence_length:
        parser.error(f"prompt {args.prompt_length} + new tokens {args.new_tokens} exceed --sequence-length {args.sequence_length}")
    return args


def build_zoo(args):
    import recipes

    recipe = recipes.get("gpt-clm", preset="tiny", sequence_length=args.sequence_length)
    return recipe.build_model(), recipe


def build_keras_hub(args, recipe, xla):
    import keras
    import keras_hub

    c = recipe.config
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=c.vocabulary_size, num_layers=c.num_layers, num_heads=c.num_heads, hidden_dim=c.hidden_dim,
        intermediate_dim=c.intermediate_dim, dropout=0.0, max_sequence_length=c.sequence_length,
    )
    model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    model.compile(sampler="greedy", jit_compile=xla)
    return model


def prompts_for(batch_size, args):
    import numpy as np

    rng = np.random.default_rng(batch_size)
    return rng.integers(5, 8192, size=(batch_size, args.prompt_length)).astype("int32")


def zoo_runner(model, prompts, args):
    prompt_lists = prompts.tolist()

    def call():
        with common.Timer() as timer:
            new = model.generate(prompt_lists, max_new_tokens=args.new_tokens)
        assert all(len(row) == args.new_tokens for row in new), "zoo generated fewer tokens than asked"
        return timer.seconds

    return call


def keras_hub_runner(model, prompts, args):
    import numpy as np

    batch_size = prompts.shape[0]
    length = args.prompt_length + args.new_tokens
    token_ids = np.zeros((batch_size, length), "int32")
    token_ids[:, : args.prompt_length] = prompts
    padding_mask = np.zeros((batch_size, length), bool)
    padding_mask[:, : args.prompt_length] = True

    def call():
        with common.Timer() as timer:
            output = model.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)
        assert output["padding_mask"].all(), "keras-hub generated fewer tokens than asked"
        return timer.seconds

    return call


def keras_hub_traces(model):
    function = getattr(model, "generate_function", None)
    counter = getattr(function, "experimental_get_tracing_count", None)
    return counter() if counter else None


def main():
    args = parse_args()
    env = common.environment()
    print(common.machine_line(env))
    zoo_model, recipe = build_zoo(args)
    keras_hub_models = {xla: build_keras_hub(args, recipe, xla) for xla in args.keras_hub_xla}
    results = []
    for batch_size in args.batch_sizes:
        prompts = prompts_for(batch_size, args)
        new_tokens = batch_size * args.new_tokens
        # label -> (one timed call, a function reading the contender's trace count)
        contenders = {ZOO: (zoo_runner(zoo_model, prompts, args), lambda: zoo_model.generate_traces)}
        for xla, model in keras_hub_models.items():
            contenders[f"keras-hub GPT2CausalLM, XLA {'on' if xla else 'off'}"] = (
                keras_hub_runner(model, prompts, args), lambda model=model: keras_hub_traces(model)
            )
        row = {}
        for label, (call, traces) in contenders.items():
            before = traces()
            first = call()
            after_first = traces()
            second = call()
            after_second = traces()
            retraced = None if after_second is None else after_second != after_first
            row[label] = {
                "first_call_s": first, "second_call_s": second,
                "traces_in_first_call": None if after_first is None else after_first - (before or 0),
                "retraced_on_second_call": retraced,
            }
            print(f"batch {batch_size} {label}: first call {first:.2f} s, second {second:.2f} s, "
                  f"traced again on the second call: {retraced}")
            if label == ZOO and retraced is not False:
                raise SystemExit(f"FAIL: the zoo's generate traced again on its second call ({after_first} -> {after_second} traces).")
        runners = {label: (lambda n, call=call: [call() for _ in range(n)]) for label, (call, _) in contenders.items()}
        times = common.interleave(runners, args.rounds, 1)
        for label, call_times in times.items():
            summary = common.summarize(call_times, new_tokens)
            summary["new_tokens_per_call"] = summary.pop("tokens_per_step")
            summary["new_tokens_per_s"] = summary.pop("tokens_per_s")
            row[label].update(summary)
        ours = row[ZOO]
        for label, r in row.items():
            r["ratio_ours_over_this"] = ours["new_tokens_per_s"] / r["new_tokens_per_s"]
        results.append({"batch_size": batch_size, "contenders": row})
    env["load_average_at_end"] = common.load_average()
    record = {
        "config": {"vocabulary_size": recipe.config.vocabulary_size, "num_layers": recipe.config.num_layers,
                   "hidden_dim": recipe.config.hidden_dim, "num_heads": recipe.config.num_heads,
                   "intermediate_dim": recipe.config.intermediate_dim, "sequence_length": args.sequence_length,
                   "prompt_length": args.prompt_length, "new_tokens": args.new_tokens, "rounds": args.rounds,
                   "decoding": "greedy", "precision": "float32"},
        "environment": env,
        "results": results,
    }
    common.save_results(args, "generation", record, markdown(record))


def markdown(record):
    c = record["config"]
    rows = []
    for result in record["results"]:
        for label, r in result["contenders"].items():
            rows.append([
                result["batch_size"], label, common.fmt(r["new_tokens_per_s"]), f"{r['ratio_ours_over_this']:.2f}x",
                f"{r['median_s'] * 1000:.0f}", f"{r['first_call_s']:.2f}", f"{r['second_call_s']:.3f}",
                {True: "yes", False: "no", None: "?"}[r["retraced_on_second_call"]],
            ])
    return "\n".join([
        f"Generation, greedy, prompt {c['prompt_length']} tokens + {c['new_tokens']} new tokens per row; shape: vocabulary "
        f"{c['vocabulary_size']}, {c['num_layers']} layers, hidden {c['hidden_dim']}, {c['num_heads']} heads, context "
        f"{c['sequence_length']}, {c['precision']}. Median of {c['rounds']} interleaved calls after the first two.",
        "",
        common.machine_line(record["environment"]),
        "",
        common.markdown_table(
            ["batch", "contender", "new tokens/s", "zoo/this", "call ms (median)", "first call s", "second call s", "retraced on 2nd call"],
            rows,
        ),
    ]) + "\n"


if __name__ == "__main__":
    main()
