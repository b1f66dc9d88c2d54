"""Input-pipeline throughput: tokens/s of the recipes' tf.data pipelines alone (no model).

Raw text in, training batches out: tokenization, packing and (bert-mlm) masking, as
`recipe.datasets()` builds them, iterated for `--batches` batches after `--warmup` untimed
ones. Training needs the pipeline to outrun the model (tokens/s of a training step are in
`train_throughput.py` results); this shows by how much.

It also runs on an older checkout (`--repo DIR`, e.g. a `git worktree` of the commit before a
change): the recipes API is the same there, so before/after compare the same work.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/pipeline.py
    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/pipeline.py --repo /tmp/old-checkout --no-save
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = {
    # name: (recipe, overrides, source)
    "gpt-clm (bpe)": ("gpt-clm", {}, "stdlib"),
    "gpt-clm (wordpiece)": ("gpt-clm", {"tokenizer": "wordpiece"}, "stdlib"),
    "bert-mlm (wordpiece)": ("bert-mlm", {}, "stdlib"),
    "classifier (wordnet)": ("classifier", {}, "wordnet"),
}


def measure(recipe_name, overrides, source, batches, warmup):
    import numpy as np
    import recipes

    recipe = recipes.get(recipe_name, **overrides)
    (train,) = recipe.datasets(source, splits=("train",), repeat=True)
    iterator = iter(train)
    for _ in range(warmup):
        next(iterator)
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        x = batch[0]
        ids = x["token_ids"] if isinstance(x, dict) else x
        tokens += int(np.prod(ids.shape))
    seconds = time.perf_counter() - start
    return tokens / seconds, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated (default: all)")
    parser.add_argument("--batches", type=int, default=400, help="timed batches per case (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed batches first, enough to fill the shuffle buffer of packed blocks (4,096 blocks = 128 batches of 32), so the timing is the steady state (default: %(default)s)")
    parser.add_argument("--repo", default=common.REPO_ROOT, help="the checkout whose recipes are measured")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.repo))
    os.chdir(args.repo)
    rows, record = [], {"cases": {}, "environment": common.environment()}
    for name in args.cases.split(","):
        recipe_name, overrides, source = CASES[name]
        tokens_per_second, seconds = measure(recipe_name, overrides, source, args.batches, args.warmup)
        print(f"{name}: {tokens_per_second:,.0f} tokens/s ({args.batches} batches in {seconds:.1f} s)", flush=True)
        record["cases"][name] = {"tokens_per_second": tokens_per_second, "seconds": seconds, "batches": args.batches}
        rows.append([name, common.fmt(tokens_per_second)])
    record["repo"] = os.path.abspath(args.repo)
    markdown = common.markdown_table(["pipeline", "tokens/s"], rows) + "\n\n" + common.machine_line(record["environment"]) + "\n"
    common.save_results(args, "pipeline", record, markdown)


if __name__ == "__main__":
    main()
