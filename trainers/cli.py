"""The `zoo` command line: list, train, evaluate, sweep, learning-curve, export, predict, fill-mask, generate, serve."""

import argparse
import json
import os
import sys
import warnings

EXIT_USAGE = 2
EXIT_FAILURE = 1
# trainers.strategy.STRATEGY_NAMES, repeated here so that `zoo --help` does not import
# TensorFlow (a test keeps the two equal).
STRATEGY_CHOICES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


from trainers.config_values import UsageError, parse_overrides  # noqa: F401 (UsageError: part of this module's API)


# -- commands --------------------------------------------------------------------------------


def _cmd_list(args):
    from trainers import catalog

    if not catalog.complete():  # recipes the catalog has not seen: the registry's (it imports TensorFlow)
        from trainers.quiet import import_tensorflow

        import_tensorflow(probe_devices=False)
    for name, entry in sorted(catalog.entries().items()):
        presets = ", ".join(sorted(entry["presets"]))
        print(f"{name:<12} presets: {presets} (default {entry['default_preset']})")
        if entry["summary"]:
            print(f"{'':<12} {entry['summary']}")
        if args.verbose:
            for preset in sorted(entry["presets"]):
                print(f"{'':<14}{preset:<7} {catalog.preset_summary(name, preset)}")
    return 0


def _recipes_epilog():
    """`zoo train --help`'s list of recipes and presets (from the catalog: no TensorFlow)."""
    from trainers import catalog

    lines = ["recipes and presets (zoo list --verbose: their shapes and sizes):"]
    for name, entry in sorted(catalog.CATALOG.items()):
        presets = ", ".join(f"{p}*" if p == entry["default_preset"] else p for p in sorted(entry["presets"]))
        lines.append(f"  {name:<12} {presets}")
    lines.append("  (* the default preset)")
    if not catalog.complete():
        lines.append("  (and recipes added since the catalog was generated, or from $ZOO_RECIPE_PATH: zoo list)")
    return "\n".join(lines)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that texts with line breaks (the recipe list) keep them."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(True))
        return super()._fill_text(text, width, indent)


def _check_before_tensorflow(args):
    """Checks what can be checked without TensorFlow (recipe, preset, config keys and their
    types, --config files): a typo is reported in a fraction of a second, not after the 7-19 s
    TensorFlow import. Raises UsageError or KeyError, with the registry's messages.

    A recipe the generated catalog lacks is rejected here only when the catalog is complete (no
    recipe module added since it was generated, no $ZOO_RECIPE_PATH: `catalog.complete()`);
    otherwise the registry checks it after the import, and a new recipe trains at once."""
    from trainers import catalog

    if args.command not in ("train", "sweep", "learning-curve"):
        return
    if args.recipe not in catalog.CATALOG and not catalog.complete():
        return  # the handler's registry look-up checks it: the same message, every recipe listed
    catalog.check_recipe(args.recipe)
    overrides = _recipe_overrides(args, args.recipe)
    preset = catalog.check_preset(args.recipe, overrides.pop("preset", None) or args.preset)
    keys = set(overrides)
    if args.command == "learning-curve":
        keys |= set(parse_overrides(args.recipe, None, args.pretrained_set or ()))
    for axis in (args.grid or ()) if args.command == "sweep" else ():
        names, sep, _ = axis.partition("=")
        if sep:
            keys |= {key.strip() for key in names.split(":") if key.strip()}
    catalog.check_keys(args.recipe, keys)
    return preset


def _print_metrics(metrics):
    print(json.dumps({k: round(float(v), 6) for k, v in metrics.items()}, indent=2))
    width = max(len(k) for k in metrics) if metrics else 0
    for key, value in metrics.items():
        print(f"{key:<{width}}  {float(value):.4f}")


def _train_options(args):
    from trainers.trainer import TrainOptions

    return TrainOptions(
        epochs=1 if args.steps else (args.epochs or 1),
        steps_per_epoch=args.steps or 0,
        strategy=args.strategy,
        jit_compile=_resolve_xla(args.xla),
        mixed_precision=args.mixed_precision or "",
        log_every=args.log_every,
        backup_every=args.backup_every,
        write_graph=args.tensorboard_graph,
        verbose=args.verbose,
        progress=args.progress,
    )


def _resolve_xla(mode):
    """--xla auto|on|off as a bool, printed (stderr): auto is on when a GPU or TPU is visible,
    off on a CPU-only machine (where training without XLA is 1.2-1.35x faster)."""
    from trainers.quiet import filtered_native_stderr

    if mode == "auto":
        import tensorflow as tf

        with filtered_native_stderr():
            accelerators = [kind for kind in ("GPU", "TPU") if tf.config.list_logical_devices(kind)]
        enabled = bool(accelerators)
        reason = f"auto: {accelerators[0]} visible" if enabled else "auto: CPU only; --xla on to force it"
    else:
        enabled, reason = mode == "on", f"--xla {mode}"
    print(f"XLA: {'on' if enabled else 'off'} ({reason})", file=sys.stderr)
    return enabled


def _recipe_overrides(args, recipe_class):
    """Config overrides from --config, --set and the dedicated flags of `train`-like commands."""
    overrides = parse_overrides(recipe_class, args.config, args.set or ())
    for key, value in (
        ("batch_size", args.batch_size), ("sequence_length", args.seq_len), ("init_from", args.init_from),
        ("shots_per_class", args.shots_per_class), ("data", args.data),
    ):
        if value is not None:
            overrides[key] = value  # `data` too: config.json records the source, and evaluate reads it
    return overrides


def _cmd_train(args):
    import recipes
    from trainers.quiet import filtered_native_stderr
    from trainers.strategy import get_strategy
    from trainers.trainer import Trainer

    overrides = _recipe_overrides(args, recipes.get_class(args.recipe))
    preset = overrides.pop("preset", None) or args.preset
    recipe = recipes.get(args.recipe, preset=preset, **overrides)
    run_dir = args.run_dir or os.path.join("runs", f"{args.recipe}-{recipe.config.preset}")
    # The strategy comes first: a multi-worker strategy must exist before any other TF op
    # (the options' --xla auto looks at the devices).
    with filtered_native_stderr():
        strategy = get_strategy(args.strategy)
    options = _train_options(args)
    result = Trainer(recipe, run_dir, options=options, strategy=strategy).train()
    final = {k: v[-1] for k, v in result.history.items()}
    if final:
        print(f"\nFinished step {result.final_step} (resumed from {result.resumed_from_step}). Final metrics:")
        _print_metrics(final)
    sample = recipe.training_sample(result.model)  # the task's (gpt-clm: a sampled continuation)
    if sample:
        print(f"\n{sample}")
    print(f"\nRun directory: {run_dir}  (tensorboard --logdir {os.path.dirname(run_dir) or '.'})")
    return 0


def _cmd_evaluate(args):
    from trainers.quiet import filtered_native_stderr
    from trainers.trainer import evaluate_run, load_run

    if not os.path.exists(args.run_dir):
        raise UsageError(f"Run directory {args.run_dir!r} does not exist.")
    with filtered_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    data = args.data or []
    # Keras warns "Your input ran out of data; interrupting training" at the end of every
    # evaluation of a dataset of unknown length: reaching its end is what evaluation is for.
    warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
    # Evaluation prints nothing to stderr itself; the filter drops what TensorFlow's C++ logs
    # while it runs the model ("oneDNN supports DT_INT64 only on platforms with AVX-512").
    if len(data) <= 1 and args.shifts is None and not args.report_dir:
        with filtered_native_stderr():
            metrics = evaluate_run(args.run_dir, data=data[0] if data else None, split=args.split, steps=args.steps)
        _print_metrics(metrics)
        return 0
    from trainers.reports import evaluation_report, write_task_report

    with filtered_native_stderr():
        model, recipe = load_run(args.run_dir)
        report = evaluation_report(
            args.run_dir, data, split=args.split, shifts=args.shifts, steps=args.steps, seed=args.seed,
            max_examples=args.max_examples, loaded=(model, recipe),
        )
    if "model_metrics" in report:
        _print_metrics(report["model_metrics"])
        print()
    print(recipe.report(report))
    directory = args.report_dir or os.path.join(args.run_dir, "evaluation", args.split)
    with filtered_native_stderr():
        paths = write_task_report(recipe, report, directory)
    print(f"Report: {paths['markdown']}, {paths['json']}; TensorBoard: tensorboard --logdir {paths['tensorboard']}")
    return 0


def _cmd_sweep(args):
    import recipes
    from trainers.quiet import filtered_native_stderr
    from trainers.reports import parse_grid, run_sweep
    from trainers.strategy import get_strategy

    recipe_class = recipes.get_class(args.recipe)
    grid = args.grid or getattr(recipe_class, "sweep_grid", None)
    if not grid:
        raise UsageError(f"{args.recipe} has no default grid: give one or more --grid KEY=V1,V2,...")
    points = parse_grid(recipe_class, grid)
    overrides = _recipe_overrides(args, recipe_class)
    preset = overrides.pop("preset", None) or args.preset
    recipes.get(args.recipe, preset=preset, **overrides)  # bad overrides fail before any training
    with filtered_native_stderr():  # before the options: --xla auto looks at the devices
        strategy = get_strategy(args.strategy)
    options = _train_options(args)
    out = args.out or os.path.join("runs", f"sweep-{args.recipe}")
    print(f"Sweep of {args.recipe}: {len(points)} runs under {out}/runs/")
    rows, paths = run_sweep(
        args.recipe, points, out, preset=preset, overrides=overrides, options=options,
        strategy=strategy, split=args.split, x=args.x, y=args.y, eval_steps=args.eval_steps,
    )
    with open(paths["md"]) as f:
        print("\n" + f.read())
    print(f"Trade-off: {paths['md']}, {paths['csv']}, {paths['png']}")
    return 0


def _cmd_learning_curve(args):
    import recipes
    from trainers.reports import parse_shots, run_learning_curve

    recipe_class = recipes.get_class(args.recipe)
    if recipe_class.kind != "classification":
        classification = [name for name in recipes.list_recipes() if recipes.get_class(name).kind == "classification"]
        raise UsageError(f"learning-curve needs a classification recipe ({', '.join(classification)}), not {args.recipe!r}.")
    overrides = _recipe_overrides(args, recipe_class)
    preset = overrides.pop("preset", None) or args.preset
    recipe = recipes.get(args.recipe, preset=preset, **overrides)
    pretrained_overrides = parse_overrides(recipe_class, None, args.pretrained_set or ())
    if pretrained_overrides and not args.pretrained:
        raise UsageError("--pretrained-set applies to the --pretrained runs: give --pretrained too.")
    recipes.get(args.recipe, preset=preset, **{**overrides, **pretrained_overrides})  # checks the keys
    out = args.out or os.path.join("runs", f"learning-curve-{args.recipe}")
    rows, paths = run_learning_curve(
        recipe, out, parse_shots(args.shots), pretrained=args.pretrained, steps=args.steps,
        max_eval_examples=args.max_examples, jit_compile=_resolve_xla(args.xla), pretrained_overrides=pretrained_overrides,
    )
    print(recipe.report(rows))
    print(f"Learning curve: {paths['markdown']}, {paths['png']}; TensorBoard: tensorboard --logdir {paths['tensorboard']}")
    return 0


def _cmd_export(args):
    from trainers.export_commands import export_run

    try:
        export_run(args.run_dir, out=args.out, format=args.format, top_k=args.top_k, jit_compile=args.xla or None,
                   quantize=args.quantize)
    except FileExistsError as error:  # exports are never overwritten: a usage error, one line
        raise UsageError(str(error)) from error
    return 0


def _cmd_predict(args):
    from trainers.export_commands import predict
    from trainers.quiet import filtered_native_stderr

    with filtered_native_stderr():  # loading a SavedModel logs oneDNN notes from C++
        predict(args.export_dir, args.texts)
    return 0


def _cmd_fill_mask(args):
    from trainers.export_commands import fill_mask
    from trainers.quiet import filtered_native_stderr

    with filtered_native_stderr():  # loading a SavedModel logs oneDNN notes from C++
        fill_mask(args.export_dir, args.texts)
    return 0


def _cmd_generate(args):
    from trainers.export_commands import generate
    from trainers.quiet import filtered_native_stderr

    with filtered_native_stderr():  # loading a SavedModel logs oneDNN notes from C++
        generate(args.export_dir, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    return 0


def _cmd_serve(args):
    from trainers.export_commands import serve

    try:
        serve(
            args.export_root, host=args.host, port=args.port, request_timeout=args.request_timeout,
            read_deadline=args.read_deadline, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
            queue_timeout=args.queue_timeout,
        )
    except FileNotFoundError:
        raise
    except OSError as error:  # the port is taken, or the host is not one of this machine's addresses
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from error
    return 0


def _port(text):
    """An argparse type: a TCP port, 0..65535 (0: any free port, printed at start)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {text!r}")
    return int(text)


def _seconds(text):
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


# -- parser ----------------------------------------------------------------------------------


def _add_recipe_arguments(parser):
    parser.add_argument("--preset", help="a preset of the recipe (default: its default preset)")
    parser.add_argument("--data", help="a built-in source (stdlib, python-docs, fortunes, wordnet) or a local path")
    parser.add_argument("--batch-size", type=int, help="global batch size (split over replicas)")
    parser.add_argument("--seq-len", type=int, help="sequence length")
    parser.add_argument("--config", help="a JSON or YAML file of config overrides")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field (repeatable)")


def _count(minimum):
    """An argparse type: an integer >= `minimum` (a negative --steps would otherwise train nothing and exit 0)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse


def _add_training_arguments(parser):
    _add_recipe_arguments(parser)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_count(1), help="number of epochs (an epoch is the recipe's steps_per_epoch)")
    length.add_argument("--steps", type=_count(1), help="train this many steps in total (one epoch)")
    parser.add_argument("--strategy", default="auto", choices=STRATEGY_CHOICES, help="tf.distribute strategy (default: auto)")
    parser.add_argument(
        "--init-from", help="classifier, multitask, bert-mlm: start from a checkpoint (a bert-mlm run, minilm or hf:<dir>); "
                            "gpt-clm: a gpt-clm run or hf:<dir> of a GPT-2 export"
    )
    parser.add_argument(
        "--shots-per-class", type=int, metavar="K",
        help="classification recipes: train on K examples per class (a deterministic sample; 0: all)",
    )
    parser.add_argument(
        "--xla", choices=["auto", "on", "off"], default="auto",
        help="XLA compilation (default auto: on when a GPU or TPU is visible, off on a CPU-only machine, "
        "where training without it is faster)",
    )
    parser.add_argument("--no-xla", dest="xla", action="store_const", const="off", help="the same as --xla off")
    parser.add_argument("--mixed-precision", choices=["mixed_bfloat16", "mixed_float16"], help="mixed precision policy")
    parser.add_argument("--log-every", type=_count(1), default=10,
                        help="TensorBoard scalars (and progress lines) every N steps (default 10)")
    parser.add_argument("--backup-every", type=_count(0), default=50,
                        help="step backups every N steps (default 50; 0: at epoch ends only)")
    parser.add_argument("--tensorboard-graph", action="store_true", help="also write the model graph to TensorBoard")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                        help="0: silent; 1: status lines and --progress (default); 2: status lines and one line per epoch")
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                        help="at --verbose 1: Keras' progress bar, or one line per --log-every steps and per epoch "
                        "(default auto: the bar when stdout is a terminal, lines otherwise)")


def build_parser():
    # The installed distribution's version: importing `zoo` would import Keras and TensorFlow.
    from importlib import metadata

    try:
        __version__ = metadata.version("keras-zoo")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        __version__ = "unknown"

    parser = argparse.ArgumentParser(prog="zoo", description="Train, evaluate and export transformer recipes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="list the registered recipes and their presets")
    listing.add_argument("--verbose", "-v", action="store_true",
                         help="also each preset's shape and parameter count (by formula: nothing is built)")
    listing.set_defaults(handler=_cmd_list)

    train = commands.add_parser(
        "train", help="train a recipe (re-running the same command resumes it)",
        description="Train a recipe into a run directory. Re-running the same command after a crash "
        "resumes from the last step backup.",
        epilog=_recipes_epilog(), formatter_class=_HelpFormatter,
    )
    train.add_argument("recipe", help="a registered recipe (see `zoo list`)")
    train.add_argument("--run-dir", help="run directory (default: runs/<recipe>-<preset>)")
    _add_training_arguments(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a run's best checkpoint; prints JSON and a table",
        description="Evaluate a run's best (else last) checkpoint. With one source: the recipe's metrics as JSON "
        "and a table. With several --data (the first is the in-domain reference), --shifts or --report-dir: a "
        "report per set with the gap to the reference (classifiers: per-class precision/recall/F1 and a "
        "confusion matrix; language models: perplexity, and for gpt-clm bits per byte, which compare across "
        "tokenizers), written as markdown, JSON, PNG and TensorBoard.",
    )
    evaluate.add_argument("run_dir", help="a run directory (or checkpoint directory)")
    evaluate.add_argument(
        "--data", action="append", metavar="SOURCE",
        help="evaluate on this source (repeatable; the first is the in-domain reference; default: the run's own)",
    )
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"], help="default: test")
    evaluate.add_argument("--steps", type=int, default=0, help="evaluate only this many batches (0: all)")
    evaluate.add_argument(
        "--shifts", nargs="?", const="all", metavar="SPEC",
        help="classifiers: also score shifted copies of the first source. SPEC: comma-separated char_noise[=RATE], "
        "word_dropout[=RATE], case[=upper|lower|title|random], length[=B1/B2...] or all (the default when "
        "--shifts is given alone)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the shift corruptions (default 0)")
    evaluate.add_argument("--max-examples", type=int, default=0, help="classifiers: at most N examples per source (0: all)")
    evaluate.add_argument("--report-dir", help="where the report goes (default: RUN_DIR/evaluation/<split>)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    sweep = commands.add_parser(
        "sweep", help="train a grid of configs and write the trade-off table and plot",
        description="Train one run per point of a config grid (re-running resumes), evaluate each and write "
        "sweep.md, sweep.csv, sweep.json and sweep.png into --out. `zoo sweep multitask` defaults to loss "
        "weights from MLM-only to classification-only (MLM perplexity vs classification accuracy); `zoo sweep "
        "distill --set teacher=RUN` to alpha 1 (student alone), 0.5, 0.1.",
        epilog=_recipes_epilog(), formatter_class=_HelpFormatter,
    )
    sweep.add_argument("recipe", help="a registered recipe (see `zoo list`)")
    sweep.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2",
        help="one axis of the grid (repeatable; axes combine as a product); K1:K2=A1:B1,A2:B2 varies keys together",
    )
    sweep.add_argument("--out", help="output directory (default: runs/sweep-<recipe>)")
    sweep.add_argument("--split", default="test", choices=["validation", "test"], help="evaluation split (default: test)")
    sweep.add_argument("--eval-steps", type=int, default=0, help="evaluate only this many batches (0: all)")
    sweep.add_argument("--x", help="metric or grid key on the plot's x axis (default: the recipe's)")
    sweep.add_argument("--y", help="metric on the plot's y axis (default: the recipe's)")
    _add_training_arguments(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    curve = commands.add_parser(
        "learning-curve", help="few-shot: test accuracy at K examples per class, from scratch vs pretrained",
        description="Train a classification recipe on K = --shots examples per class (the same step budget "
        "for each K), from scratch and, with --pretrained, from a pretrained encoder; write the table, a PNG "
        "and TensorBoard scalars into --out.",
    )
    curve.add_argument("recipe", nargs="?", default="classifier", help="a classification recipe (default: classifier)")
    _add_recipe_arguments(curve)
    curve.add_argument("--shots", default="8,32,128,all", help="K values, comma-separated; all = every example (default 8,32,128,all)")
    curve.add_argument("--pretrained", help="also from this checkpoint: minilm, hf:<dir> or a bert-mlm run")
    curve.add_argument(
        "--pretrained-set", action="append", metavar="KEY=VALUE",
        help="a config override for the pretrained runs only (repeatable), e.g. learning_rate=5e-5",
    )
    curve.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    curve.add_argument("--max-examples", type=int, default=0, help="score on at most N test examples (0: all)")
    curve.add_argument("--out", help="output directory (default: runs/learning-curve-<recipe>)")
    curve.add_argument(
        "--xla", choices=["auto", "on", "off"], default="auto",
        help="XLA compilation (default auto: on when a GPU or TPU is visible, off on a CPU-only machine, "
        "where training without it is faster)",
    )
    curve.add_argument("--no-xla", dest="xla", action="store_const", const="off", help="the same as --xla off")
    curve.set_defaults(handler=_cmd_learning_curve, init_from=None, shots_per_class=None)

    export = commands.add_parser(
        "export", help="export a run: a SavedModel with raw-text signatures, an ids-only SavedModel, Hugging Face or ONNX"
    )
    export.add_argument("run_dir", help="a run directory, checkpoint directory or .keras file")
    export.add_argument(
        "--format", choices=["savedmodel", "ids", "hf", "onnx"], default="savedmodel",
        help="savedmodel (default: raw-text signatures); ids (token-id signatures in core TensorFlow ops, for the "
             "stock TF Serving image); hf (the Hugging Face layout: GPT2LMHeadModel, BertForMaskedLM, BertModel); "
             "onnx (ids -> logits, with tokenizer.json)",
    )
    export.add_argument("--out", help="export directory (default: saved_models/<run name>/<next version>; "
                                      "other formats: saved_models/<run name>-<format>/<next version>)")
    export.add_argument("--top-k", type=int, help="exports with fill_mask (bert-mlm, multitask): candidates per [MASK] (default 5)")
    export.add_argument(
        "--quantize", choices=["int8"],
        help="SavedModel formats: Keras' post-training quantization of every Dense, EinsumDense and Embedding "
             "(int8 weights with per-channel scales; README: size, latency and accuracy)",
    )
    export.add_argument(
        "--xla", action="store_true",
        help="gpt-clm: compile the generate signature with XLA (4x faster on a CPU; the loading runtime "
             "compiles once per batch size, and TF Serving needs XLA enabled)",
    )
    export.set_defaults(handler=_cmd_export)

    predict = commands.add_parser("predict", help="classify texts with an exported classifier (SavedModel)")
    predict.add_argument("export_dir", help="an export (version directory, or model directory: newest version)")
    predict.add_argument("texts", nargs="+", metavar="TEXT")
    predict.set_defaults(handler=_cmd_predict)

    fill = commands.add_parser("fill-mask", help="fill [MASK] tokens with an exported bert-mlm (SavedModel)")
    fill.add_argument("export_dir")
    fill.add_argument("texts", nargs="+", metavar="TEXT")
    fill.set_defaults(handler=_cmd_fill_mask)

    generate = commands.add_parser("generate", help="continue a prompt with an exported gpt-clm (SavedModel)")
    generate.add_argument("export_dir")
    generate.add_argument("prompt")
    generate.add_argument("--max-new-tokens", type=int, help="default: the export's")
    generate.add_argument("--temperature", type=float, help="0 for greedy (the default)")
    generate.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0: all)")
    generate.add_argument("--top-p", type=float, help="nucleus sampling mass (1: all)")
    generate.add_argument("--seed", type=int, help="sampling seed")
    generate.set_defaults(handler=_cmd_generate)

    serve = commands.add_parser("serve", help="serve exports over TensorFlow Serving's REST API")
    serve.add_argument("export_root", nargs="?", default="saved_models", help="default: saved_models")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback)")
    serve.add_argument("--port", type=_port, default=8501, help="default: 8501 (0: any free port, printed at start)")
    serve.add_argument("--request-timeout", type=_seconds, default=20.0,
                       help="seconds a client may stay silent while sending a request (default 20)")
    serve.add_argument("--read-deadline", type=_seconds, default=60.0,
                       help="seconds to receive a whole request, however it trickles in (default 60)")
    serve.add_argument("--max-concurrent", type=int, default=4, help="predictions running at once (default 4)")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="predictions waiting for a slot; more get 503 with Retry-After (default 64)")
    serve.add_argument("--queue-timeout", type=_seconds, default=30.0,
                       help="seconds a prediction waits for a slot before a 503 (default 30)")
    serve.set_defaults(handler=_cmd_serve)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_before_tensorflow(args)  # a typo is reported before the 7-19 s TensorFlow import
    except (UsageError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "list":
        try:
            return args.handler(args)
        except (ValueError, FileNotFoundError) as error:  # from the registry's recipes: a bad $ZOO_RECIPE_PATH
            print(f"zoo list: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    from trainers.quiet import import_tensorflow

    # `train` and `sweep` create their strategy before any device use (a multi-worker strategy
    # must come first); every other command probes the devices now, inside the filter that
    # drops TensorFlow's CUDA-probe noise ("failed call to cuInit").
    import_tensorflow(probe_devices=args.command not in ("train", "sweep"), status=getattr(args, "verbose", 1) != 0)
    from trainers.errors import TrainingError
    from zoo.data.errors import DataFormatError, MissingCorpusError

    try:
        return args.handler(args)
    except (UsageError, KeyError, ValueError, FileNotFoundError, MissingCorpusError, DataFormatError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as error:  # training started and stopped on a fault (diverged, disk full): not a usage error
        print(f"zoo {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"zoo {args.command}: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
