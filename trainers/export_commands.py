"""The export and inference commands of the `zoo` CLI, as functions.

`export_run` turns a run's checkpoint into a SavedModel (or, `format=`, an ids-only SavedModel,
a Hugging Face directory or an ONNX file; it needs Keras and the recipe).
`predict`, `fill_mask` and `generate` load only the SavedModel (`tf.saved_model.load` with
tensorflow_text's ops), exactly as a serving process would, print their results and return
them. `serve` runs the TF-Serving-compatible HTTP server of the `serving` package.

An export directory may be given as a version directory (`saved_models/gpt-clm-tiny/3`) or as
a model directory holding integer versions (`saved_models/gpt-clm-tiny`: the highest is used).

Problems a user can fix raise ValueError (or FileNotFoundError / FileExistsError) with one line
that names the file or the value and what to do, which the CLI prints with exit status 2: an
existing export directory, a malformed `zoo_metadata.json`, a truncated `saved_model.pb` or
variables file, and generation settings the export's signature rejects.
"""

import dataclasses
import json
import os

DEFAULT_EXPORT_ROOT = "saved_models"
EXPORT_FORMATS = ("savedmodel", "ids", "hf", "onnx")


# -- export ------------------------------------------------------------------------------------


def export_run(run_dir, out=None, metrics=None, export_root=DEFAULT_EXPORT_ROOT, format="savedmodel", quantize=None,
               **options):
    """Exports a run's best (else last) checkpoint; prints and returns the export's path.

    The run's task (its recipe) says what the export offers (`recipe.export_module`, and for
    the other formats `recipe.export_hf`, `recipe.onnx_model`).

    Args:
        run_dir: a run directory, a checkpoint directory (holding model.keras) or a .keras file.
        out: the export directory to create; by default `<export_root>/<model>/<next version>`
            (TF Serving's layout: versions are integers, the first is 1), where `<model>` is the
            run's name for "savedmodel" and `<run name>-ids`, `-hf` or `-onnx` for the other
            formats (TF Serving and `zoo serve` then see the text and the ids-only SavedModel as
            two models, and skip directories without a saved_model.pb).
        metrics: recorded in the export's metadata; by default the checkpoint's metrics.json.
        quantize: "int8" for Keras' post-training quantization of the weights (SavedModel formats).
        format: one of `EXPORT_FORMATS`: "savedmodel" (raw-text signatures, `Task.export`),
            "ids" (the `*_ids` signatures only, core TensorFlow ops, for the stock TF Serving
            image: `Task.export(..., ids_only=True)`), "hf" (the Hugging Face layout,
            `Task.export_hf`, zoo.converters.hf_export) or "onnx" (ids -> logits as
            `model.onnx` with the tokenizer files, `Task.onnx_model`, zoo.converters.onnx_export).
        options: the task's SavedModel export options (`recipe.export_options`, e.g. top_k,
            jit_compile); None values are ignored, an option the task lacks raises ValueError;
            the hf and onnx formats take none.
    """
    import recipes
    from recipes.base import load_checkpoint

    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}.")
    given = sorted(key for key, value in {**options, "quantize": quantize}.items() if value is not None)
    if format in ("hf", "onnx") and given:
        raise ValueError(f"The {format} format takes no export option ({given[0]} is for SavedModel exports).")
    if out is not None and os.path.lexists(out):  # before the checkpoint is loaded: fail fast
        raise FileExistsError(
            f"Export directory {out!r} already exists; exports are never overwritten: give another --out "
            "(or leave it out for the next version)."
        )
    checkpoint_dir = _checkpoint_directory(run_dir)
    model, tokenizer, config = load_checkpoint(checkpoint_dir)
    if not config:
        raise FileNotFoundError(
            f"No config.json beside the model in {checkpoint_dir!r}: the recipe that built it is unknown."
        )
    config = dict(config)
    name, preset = config.pop("recipe"), config.pop("preset")
    # A classifier's init_from would load the pretrained checkpoint again (its weights are in
    # this model already): build the recipe without it, then put it back for the metadata.
    init_from = config.pop("init_from", None)
    recipe = recipes.get(name, preset=preset, **config)
    if init_from is not None:
        recipe.config = dataclasses.replace(recipe.config, init_from=init_from)
    recipe.tokenizer = tokenizer
    labels_path = os.path.join(checkpoint_dir, "labels.json")
    if os.path.exists(labels_path):
        with open(labels_path, encoding="utf-8") as f:
            recipe.label_names = json.load(f)
    if metrics is None:
        metrics_path = os.path.join(checkpoint_dir, "metrics.json")
        if os.path.exists(metrics_path):
            with open(metrics_path, encoding="utf-8") as f:
                metrics = json.load(f)
    if out is None:
        suffix = "" if format == "savedmodel" else f"-{format}"
        out = next_version_directory(os.path.join(export_root, _run_name(run_dir) + suffix))
    from trainers.progress import phase

    with phase(f"exporting {out}"):  # status lines on stderr: the SavedModel takes seconds to trace and write
        try:
            if format == "hf":
                path = recipe.export_hf(model, out, metrics=metrics)
            elif format == "onnx":
                path = _export_onnx(recipe, model, out, metrics)
            else:
                path = recipe.export(model, out, metrics=metrics, ids_only=format == "ids", quantize=quantize, **options)
        except NotImplementedError as error:  # the task has no such export: one line, a usage error
            raise ValueError(str(error)) from error
    print(path)
    return path


def _export_onnx(recipe, model, out, metrics):
    from zoo.converters.onnx_export import export_onnx

    name, config = recipe.export_metadata()
    metadata = {"recipe": name, "config": config, "metrics": metrics, "sequence_length": recipe.preprocessor.sequence_length}
    if getattr(recipe, "label_names", None) is not None:
        metadata["label_names"] = list(recipe.label_names)
    return export_onnx(recipe.onnx_model(model), recipe.preprocessor.tokenizer, out, metadata=metadata)


def next_version_directory(model_dir):
    """`<model_dir>/<1 + the highest integer version there>` (`<model_dir>/1` for a new model)."""
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()] if os.path.isdir(model_dir) else []
    return os.path.join(model_dir, str(max(versions, default=0) + 1))


def _checkpoint_directory(path):
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    for candidate in (path, os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "last")):
        if os.path.exists(os.path.join(candidate, "model.keras")):
            return candidate
    raise FileNotFoundError(f"No model.keras in {path!r} (nor in its checkpoints/best or checkpoints/last).")


def _run_name(run_dir):
    """`runs/gpt-clm-tiny`, `runs/gpt-clm-tiny/checkpoints/best` and its model.keras all name `gpt-clm-tiny`."""
    path = os.path.abspath(run_dir)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    if os.path.basename(os.path.dirname(path)) == "checkpoints":
        path = os.path.dirname(os.path.dirname(path))
    return os.path.basename(path)


# -- inference from a SavedModel ---------------------------------------------------------------


def load_export(export_dir):
    """(the loaded SavedModel, its zoo metadata) from a version or model directory.

    A malformed metadata file or a truncated SavedModel raises ValueError naming the file.
    """
    from zoo.export_files import load_export_directory

    return load_export_directory(resolve_export(export_dir))


def resolve_export(export_dir):
    """The version directory: `export_dir` itself if it holds a SavedModel, else its highest integer version."""
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = sorted(
        int(entry) for entry in (os.listdir(export_dir) if os.path.isdir(export_dir) else [])
        if entry.isdigit() and os.path.isfile(os.path.join(export_dir, entry, "saved_model.pb"))
    )
    if not versions:
        raise FileNotFoundError(
            f"No SavedModel in {export_dir!r} (neither saved_model.pb nor integer version directories)."
        )
    return os.path.join(export_dir, str(versions[-1]))


def predict(export_dir, texts):
    """Runs an export on texts through its main signature: labels (`classify`), masks filled
    (`fill_mask`) or continuations (`generate`), in that order of preference.

    With `classify` prints one JSON object per text ({"text", "label", "label_id",
    "probabilities": {label: p}}) and returns the list of them; otherwise `fill_mask` /
    `generate` run with the export's default settings.
    """
    loaded, metadata = load_export(export_dir)
    signatures = loaded.signatures
    if "classify" not in signatures and "fill_mask" in signatures:
        return fill_mask(export_dir, texts)
    if "classify" not in signatures and "generate" in signatures:
        return generate(export_dir, _as_list(texts))
    if "classify" not in signatures:
        raise _not_an_export(export_dir, "classify", loaded)
    import tensorflow as tf

    texts = _as_list(texts)
    outputs = loaded.signatures["classify"](text=tf.constant(texts, tf.string))
    labels = metadata.get("label_names") or [str(i) for i in range(outputs["probabilities"].shape[-1])]
    results = []
    for index, text in enumerate(texts):
        result = {
            "text": text,
            "label": outputs["label"][index].numpy().decode("utf-8"),
            "label_id": int(outputs["label_id"][index]),
            "probabilities": {
                label: round(float(p), 6) for label, p in zip(labels, outputs["probabilities"][index].numpy())
            },
        }
        print(json.dumps(result, ensure_ascii=False))
        results.append(result)
    return results


def fill_mask(export_dir, texts):
    """The best candidates for each "[MASK]" of each text, from a bert-mlm export.

    Prints one JSON object per text ({"text", "masks": [[{"token", "score"}, ...] per mask]})
    and returns the list of them.
    """
    import tensorflow as tf

    loaded, _ = load_export(export_dir)
    if "fill_mask" not in loaded.signatures:
        raise _not_an_export(export_dir, "fill_mask", loaded)
    texts = _as_list(texts)
    outputs = loaded.signatures["fill_mask"](text=tf.constant(texts, tf.string))
    results = []
    for index, text in enumerate(texts):
        masks = []
        for slot in range(int(outputs["num_masks"][index])):
            tokens = outputs["tokens"][index, slot].numpy()
            scores = outputs["scores"][index, slot].numpy()
            masks.append([{"token": t.decode("utf-8"), "score": round(float(s), 6)} for t, s in zip(tokens, scores)])
        result = {"text": text, "masks": masks}
        print(json.dumps(result, ensure_ascii=False))
        results.append(result)
    return results


def generate(export_dir, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None, seed=None):
    """Continues `prompt` (a string, or a list of them) with a gpt-clm export.

    Settings left as None take the export's defaults (greedy, `sample_tokens` new tokens).
    Prints each prompt followed by its continuation; returns the continuation (a list for a
    list of prompts). Settings the export rejects raise ValueError with its one-line rule.
    """
    import tensorflow as tf

    from zoo.export_files import graph_error_text

    loaded, metadata = load_export(export_dir)
    if "generate" not in loaded.signatures:
        raise _not_an_export(export_dir, "generate", loaded)
    defaults = {"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    defaults.update((metadata.get("signature_defaults") or {}).get("generate") or {})
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    settings = {name: defaults[name] if value is None else value for name, value in given.items()}
    for name in ("max_new_tokens", "top_k", "seed"):
        if not -(2**31) <= int(settings[name]) < 2**31:
            raise ValueError(f"{name} must fit in int32, got {settings[name]}.")
    prompts = _as_list(prompt)
    try:
        outputs = loaded.signatures["generate"](
            prompt=tf.constant(prompts, tf.string),
            max_new_tokens=tf.constant(int(settings["max_new_tokens"]), tf.int32),
            temperature=tf.constant(float(settings["temperature"]), tf.float32),
            top_k=tf.constant(int(settings["top_k"]), tf.int32),
            top_p=tf.constant(float(settings["top_p"]), tf.float32),
            seed=tf.constant(int(settings["seed"]), tf.int32),
        )
    except tf.errors.InvalidArgumentError as error:  # the signature's checks: the same rule as a server's
        raise ValueError(graph_error_text(error.message)) from error
    continuations = [text.decode("utf-8", errors="replace") for text in outputs["text"].numpy()]
    for text, continuation in zip(prompts, continuations):
        print(text + continuation)
    return continuations if isinstance(prompt, (list, tuple)) else continuations[0]


def serve(export_root=DEFAULT_EXPORT_ROOT, host="127.0.0.1", port=8501, **options):
    """Serves every model under `export_root` over TF Serving's REST API until interrupted."""
    from serving.server import serve as serve_forever

    serve_forever(export_root, host=host, port=port, **options)


def _not_an_export(export_dir, signature, loaded):
    return ValueError(
        f"{export_dir!r} has no {signature!r} signature (it has: {', '.join(sorted(loaded.signatures))})."
    )


def _as_list(texts):
    return [texts] if isinstance(texts, str) else list(texts)
