"""SavedModel export with raw-string serving signatures: the export modules that tasks build.

A task (every recipe is one) describes what its trained model offers as an `ExportModule`: its
preprocessor and groups of signatures (`Endpoints`). `export_savedmodel(module, path, name)`
tracks the Keras objects and the preprocessor (tokenizer included) in a
`keras.export.ExportArchive` and adds `tf.function` endpoints that take `tf.string` text, so
tokenization, the model and all post-processing run inside one TensorFlow graph. Loading the
export needs `import tensorflow` and `import tensorflow_text` (for the tokenizer's custom ops)
and nothing else: no Keras, no zoo code.

Signatures (every input is batched along its first axis unless it is a scalar); the module
says which one `serving_default` aliases:

`ClassifyEndpoints`
    `classify`: text string [B] ->
        label string [B], label_id int32 [B], probabilities float32 [B, C], logits float32 [B, C].
    `classify_ids`: token_ids int32 [B, T], padding_mask int32 [B, T] (1 at real tokens) ->
        the same outputs. T must not exceed `sequence_length`, ids must lie in
        [0, vocabulary_size) and the mask hold only 0 and 1.
`FillMaskEndpoints`
    `fill_mask`: text string [B], each with zero or more "[MASK]" ->
        tokens string [B, M, k], scores float32 [B, M, k] (softmax probabilities, best first),
        token_ids int32 [B, M, k], num_masks int32 [B].
    `fill_mask_ids`: token_ids int32 [B, T] (masks already [MASK]'s id), padding_mask int32
        [B, T] -> tokens, scores, token_ids, num_masks as above, plus mask_positions int32 [B, M].
    M is the largest number of masks in any text of the batch; a text with fewer masks has
    its rows `num_masks..M-1` padded with token "", token id -1 and score 0. k is fixed at
    export (`top_k`). Masks cut off by truncation are not predicted (they are not counted).
`GenerateEndpoints`
    `generate`: prompt string [B], and the settings max_new_tokens
        int32, temperature float32, top_k int32, top_p float32, seed int32, each of shape []
        (one setting for the batch) or [B] (one per row) -> text string [B], the continuation
        only (without the prompt), which stops before the end-of-document token [SEP].
    `generate_ids`: token_ids int32 [B, T] right-padded prompts (each must start as the
        client wants it to; `generate` puts [SEP] first; ids in [0, vocabulary_size)),
        lengths int32 [B] (each in [1, T]), and the same five settings -> token_ids int32
        [B, N] (new tokens, the end token included when produced, padded with 0; N is the
        largest max_new_tokens), lengths int32 [B].

    The settings have an unknown rank in the signature so that both shapes pass: a scalar is
    what clients have always sent, and a vector is what TF Serving's row format makes of
    instances that each carry their own settings (`zoo serve` does the same), so instances
    with different seeds or temperatures run as one batch.

    It also has `tokenize`: text string [B] -> token_ids int32 [B, L] (each text's tokens
    followed by the end token [SEP], as the training stream holds a document; padded with
    [PAD]) and lengths int32 [B]; and `detokenize` (token_ids [B, L], lengths [B] -> text [B]).
`TokenizeEndpoint` (with the encoder groups)
    `tokenize`: text string [B] -> token_ids int32 [B, T] and padding_mask int32 [B, T], as
    `classify` (or `fill_mask`, with its masks) packs them.
`EmbedEndpoint`
    `embed`: text string [B] -> embedding float32 [B, hidden], the mean-pooled, unit-length
    encoder output.

Text becomes ids only through the task's preprocessor (`zoo.data.preprocessing`), the same
layer the training pipeline used, so serving cannot drift from training. Truncation is the
preprocessor's and is recorded in the metadata (`preprocessor`): encoder texts become `[CLS]
tokens [SEP]` and keep their first `sequence_length - 2` tokens, where `sequence_length` is what
training used (not the encoder's position table); `embed` keeps as many as the checkpoint's
sentence-transformers `max_seq_length` when the model started from one, else the same.
Generation runs in a buffer of `sequence_length` tokens: a prompt (with its leading [SEP]) keeps
its last `sequence_length - max_new_tokens` tokens.

Every input is checked inside the signature before any other work (so TF Serving, `zoo serve`
and any client get the same rules), failing with InvalidArgument and a one-line message that
names the input and the bad values: a non-empty batch, `1 <= max_new_tokens <= sequence_length
- 1`, a finite `temperature >= 0` (0 is greedy), `0 < top_p <= 1` (1: no limit), `top_k >= 0`
(0: no limit), token ids within the vocabulary, padding masks of 0 and 1.

Generation uses `zoo.models.generation.generate_tokens` (a `tf.while_loop` with the KV cache)
over the whole batch; `jit_compile=True` compiles it with XLA inside the SavedModel (faster,
but see `GenerateEndpoints`). Sampling noise depends on the seed, the step and the row's place in the
batch: the same batch, settings and seed give the same text. A scalar setting computes exactly
what the same value repeated per row does.

An ids-only export (`ids_only=True`, `zoo export --format ids`) has just the `*_ids` signatures
(the serving default is `<default>_ids`) and no tokenizer in its graph: core TensorFlow ops only,
so the stock `tensorflow/serving` image loads it; clients tokenize with `assets/tokenizer.json`.

Layout: a standard SavedModel (`saved_model.pb`, `variables/`) plus
`assets.extra/tf_serving_warmup_requests` (one warm-up request per signature, which TF Serving
runs at load time), `assets/vocab.txt`,
`assets/tokenizer.json` (the vocabulary and options, as `zoo.data.tokenizer.save_tokenizer`
writes them) and `assets/zoo_metadata.json` (the task's name as `recipe`, its resolved config, the preprocessor's
settings, label names, metrics, signature descriptions and defaults, library versions). The export is written to a hidden
temporary sibling directory and renamed into place, so `path` either does not exist or holds
a complete export; an existing `path` is never overwritten. Temporary directories that a killed
export left behind are removed by the next export into the same model directory. Files are
written with the umask's permissions (0644 under the usual umask 022), and the metadata is
strict JSON (a non-finite metric is written as null).
"""

import datetime
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import uuid

import keras
import numpy as np
import tensorflow as tf

from zoo import export_files

METADATA_FILE = "zoo_metadata.json"
METADATA_FORMAT = "zoo.export/1"
DEFAULT_TOP_K = 5
# A temporary export directory: `.<version>.tmp-<host>-<pid>-<random>`; older versions of this
# module wrote `.<version>.tmp-<random>`.
_TEMPORARY = re.compile(r"^\.(?P<target>[^/]+)\.tmp-(?:(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-)?[0-9a-f]{12}$")
# A temporary directory without a (host, pid) owner, or another host's, counts as abandoned
# once nothing in it has changed for this long.
STALE_TEMPORARY_SECONDS = 24 * 3600


class Endpoints:
    """A group of signatures an export module adds (see `ExportModule`).

    Subclasses set `options` (the export options they take, name -> description; each is also
    an attribute holding the value in use), list the
    Keras objects their functions use in `trackables`, and implement `add(archive, preprocessor,
    text=True)`, which adds `tf.function` endpoints to a `keras.export.ExportArchive` and returns
    `(signatures, defaults)`: the metadata's description of each signature and the default values
    of its settings. With `text=False` only the signatures that take ids are added (they use the
    preprocessor's settings, never its ops). `metadata()` gives extra metadata entries (e.g.
    `label_names`).
    """

    options = {}

    def __init__(self, trackables):
        self.trackables = list(trackables)

    def add(self, archive, preprocessor, text=True):
        raise NotImplementedError

    def metadata(self):
        return {}


class ExportModule:
    """The named signatures a trained model offers as a SavedModel: what a task exports.

    Args:
        preprocessor: the task's `zoo.data.preprocessing` layer; every text signature prepares
            its text with it (it is tracked with its tokenizer, whose assets go in `assets/`).
        endpoints: `Endpoints` groups; their signature names must not collide.
        serving_default: the signature that `serving_default` aliases; in an ids-only export,
            `<serving_default>_ids`. It must be the first signature the endpoint groups add
            (Keras' ExportArchive makes its first endpoint the SavedModel's `serving_default`).

    `write(path, ...)` writes the SavedModel (see `export_savedmodel`).
    """

    def __init__(self, preprocessor, endpoints, serving_default):
        self.preprocessor = preprocessor
        self.endpoints = list(endpoints)
        self.serving_default = serving_default

    def write(self, path, name, config=None, metrics=None, ids_only=False, quantization=None):
        return export_savedmodel(self, path, name, config=config, metrics=metrics, ids_only=ids_only,
                                 quantization=quantization)


def export_savedmodel(module, path, name, config=None, metrics=None, ids_only=False, quantization=None):
    """Writes `module` (an `ExportModule`) as a SavedModel with raw-text signatures; returns `path`.

    Args:
        module: the export module, e.g. from a recipe's `export_module(model, **options)`.
        path: the export directory to create, e.g. `saved_models/my-model/1` (TF Serving
            layout: `<model name>/<integer version>`). Must not exist.
        name: what the metadata records as the exporting task (`recipe`), e.g. a recipe name.
        config: the task's resolved config (a JSON-able dict), recorded in the metadata.
        metrics: optional dict of evaluation metrics, recorded in `zoo_metadata.json`.
        ids_only: only the signatures that take token ids (`classify_ids`, `fill_mask_ids`,
            `generate_ids`), in a graph of core TensorFlow ops: the stock TF Serving image loads
            it (it lacks tensorflow_text's ops, so it refuses the text signatures' graphs).
            Clients tokenize with `assets/tokenizer.json` (HF `tokenizers`) or `vocab.txt`.
        quantization: how the model's weights were quantized ("int8"), recorded in the metadata.

    Every export also gets TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`,
    see `write_warmup_requests`): one small request per signature, which TF Serving runs when it
    loads the model, so the first real request does not pay for tracing and allocation.

    The metadata's `export_options` records every option of the module's endpoint groups with
    the value it took (`Endpoints.options`, read from the attribute of the same name).
    """
    path = os.fspath(path)
    preprocessor = module.preprocessor
    if preprocessor is None or preprocessor.tokenizer is None:
        raise ValueError("The export module has no tokenizer: load it with the checkpoint (or call datasets()) before exporting.")
    if os.path.lexists(path):
        raise FileExistsError(
            f"Export path {path!r} already exists; exports are never overwritten: pick a new version "
            "directory (or leave --out unset for the next version)."
        )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent)
    # A hidden sibling (servers skip non-integer names), made with os.mkdir so that it gets the
    # umask's permissions rather than mkdtemp's owner-only ones. Its name says which process
    # owns it, so that a later export can tell an abandoned one from one still being written.
    owner = f"{_host_id()}-{os.getpid()}"
    temporary = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.tmp-{owner}-{uuid.uuid4().hex[:12]}")
    os.mkdir(temporary)
    try:
        archive = keras.export.ExportArchive()
        tracked = set()
        for endpoints in module.endpoints:
            for trackable in endpoints.trackables:
                if id(trackable) not in tracked:
                    tracked.add(id(trackable))
                    archive.track(trackable)
        tokenizer = preprocessor.tokenizer
        if not ids_only:  # the ids-only graph has no tokenizer: its ops are tensorflow_text's
            if not tokenizer.built:  # a stateless layer, never called in a Keras model: build() only marks it built
                tokenizer.build(None)
            archive.track(tokenizer)
            archive.track(preprocessor)
        signatures, defaults, extra = {}, {}, {}
        for endpoints in module.endpoints:
            added, added_defaults = endpoints.add(archive, preprocessor, text=not ids_only)
            clash = sorted(set(added) & set(signatures))
            if clash:
                raise ValueError(f"Two endpoint groups define the signature(s) {', '.join(clash)}.")
            signatures.update(added)
            defaults.update(added_defaults)
            extra.update(endpoints.metadata())
        default = module.serving_default + ("_ids" if ids_only else "")
        if default not in signatures:
            raise ValueError(f"serving_default names {default!r}, not one of {', '.join(sorted(signatures))}.")
        signatures["serving_default"] = signatures[default]
        if default in defaults:
            defaults["serving_default"] = dict(defaults[default])
        archive.write_out(temporary, verbose=False)
        write_warmup_requests(temporary, os.path.basename(os.path.dirname(os.path.abspath(path))), signatures, defaults,
                              preprocessor)
        metadata = {
            "recipe": name, "config": config, "ids_only": bool(ids_only), "quantization": quantization,
            "signatures": signatures,
            "signature_defaults": defaults,
            "export_options": {key: getattr(group, key) for group in module.endpoints for key in group.options},
            "label_names": None, **extra,
        }
        _write_assets(temporary, preprocessor, metadata, metrics)
        _make_readable(temporary)
        if os.path.lexists(path):
            raise FileExistsError(f"Export path {path!r} appeared while exporting; not overwriting it.")
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def read_metadata(export_dir):
    """The `zoo_metadata.json` of an export, as a dict (needs no TensorFlow).

    A file that is not a JSON object raises ValueError (`zoo.export_files.ExportLoadError`) naming it.
    """
    from zoo.export_files import read_export_metadata

    path = os.path.join(export_dir, "assets", METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {path}: {export_dir!r} is not a zoo export, or an incomplete copy of one.")
    return read_export_metadata(export_dir)


def remove_stale_temporaries(model_dir):
    """Removes the temporary export directories in `model_dir` whose export is gone; returns their paths.

    A directory named for a process on this host is stale once that process has ended (a
    killed export); any other (an older naming scheme, or another host's over a shared
    filesystem) once nothing in it has changed for `STALE_TEMPORARY_SECONDS`.
    """
    removed = []
    try:
        entries = os.listdir(model_dir)
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMPORARY.match(entry)
        directory = os.path.join(model_dir, entry)
        if not match or not os.path.isdir(directory) or os.path.islink(directory):
            continue
        if match.group("host") == _host_id():
            stale = not _process_alive(int(match.group("pid")))
        else:
            stale = now - _last_change(directory) > STALE_TEMPORARY_SECONDS
        if stale:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _host_id():
    return hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _last_change(directory):
    latest = os.lstat(directory).st_mtime
    for root, directories, files in os.walk(directory):
        for name in directories + files:
            try:
                latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return latest


def _current_umask():
    """The process's umask, read without changing it where Linux shows it (os.umask can only
    read it by setting it, which races with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _make_readable(directory):
    """Gives every file and directory of the export the umask's permissions.

    Some writers (the tokenizer's atomic writes, through mkstemp) create owner-only files, which
    a serving process running as another user could not read.
    """
    umask = _current_umask()
    for root, directories, files in os.walk(directory):
        for name in directories:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
    os.chmod(directory, 0o777 & ~umask)


# -- checks ------------------------------------------------------------------------------------


def _require(condition, message, values=None, label="got"):
    """An assertion that `condition` holds everywhere; it fails with `message` and the first
    offending `values` (InvalidArgument: "assertion failed: [message] [got] [values]")."""
    condition = tf.convert_to_tensor(condition)
    data = [message]
    if values is not None and condition.shape.rank == 0:  # a condition on the whole tensor: show it
        data += [label, values]
    elif values is not None:  # element-wise: show the elements that fail
        condition = tf.reshape(condition, [-1])
        data += [label, tf.boolean_mask(tf.broadcast_to(tf.reshape(values, [-1]), tf.shape(condition)), tf.logical_not(condition))]
    return tf.debugging.Assert(tf.reduce_all(condition), data, summarize=3)


def _checked(checks, *tensors):
    """`tensors`, usable only after every check has passed: the work that follows depends on
    them, so no tokenization, no range and no gather runs on an invalid input."""
    with tf.control_dependencies(checks):
        return [tf.identity(tensor) for tensor in tensors]


def _id_checks(name, token_ids, vocabulary_size):
    return [_require(
        tf.logical_and(token_ids >= 0, token_ids < vocabulary_size),
        f"{name} must lie in [0, {vocabulary_size}), the vocabulary", token_ids,
    )]


def _rows_checks(token_ids, lengths, minimum_length, vocabulary_size):
    """Checks of right-padded rows of ids `[B, L]` with their lengths `[B]`."""
    return [
        _require(
            tf.shape(lengths)[0] == tf.shape(token_ids)[0], "lengths must have one entry per row of token_ids",
            tf.shape(lengths), "got shape",
        ),
        _require(
            tf.logical_and(lengths >= minimum_length, lengths <= tf.shape(token_ids)[1]),
            f"every length must be between {minimum_length} and the width of token_ids", lengths,
        ),
    ] + _id_checks("token_ids", token_ids, vocabulary_size)


def _check_ids(token_ids, padding_mask, sequence_length, vocabulary_size):
    checks = [
        _require(
            tf.shape(token_ids)[1] <= sequence_length,
            f"token_ids must have at most {sequence_length} positions (the sequence_length)", tf.shape(token_ids)[1],
        ),
        _require(
            tf.reduce_all(tf.equal(tf.shape(token_ids), tf.shape(padding_mask))),
            "padding_mask must have the shape of token_ids", tf.shape(padding_mask), "got shape",
        ),
        _require(tf.logical_or(padding_mask == 0, padding_mask == 1), "padding_mask must hold only 0 and 1", padding_mask),
    ] + _id_checks("token_ids", token_ids, vocabulary_size)
    token_ids, padding_mask = _checked(checks, token_ids, padding_mask)
    return token_ids, tf.cast(padding_mask, tf.bool)


def _string_spec(name):
    return tf.TensorSpec([None], tf.string, name=name)


def _ids_specs():
    return [
        tf.TensorSpec([None, None], tf.int32, name="token_ids"),
        tf.TensorSpec([None, None], tf.int32, name="padding_mask"),
    ]


def _describe(input_signature, outputs):
    """The signature in the metadata; an input of unknown rank (a setting: [] or [B]) has shape null."""
    return {
        "inputs": {
            spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list() if spec.shape.rank is not None else None}
            for spec in input_signature
        },
        "outputs": outputs,
    }


def _add_text_and_ids(archive, name, text_function, ids_function, described, ids_described, text):
    """Adds `<name>` (text [B] in; only when `text`) and `<name>_ids` (token ids and padding mask
    in); returns their descriptions for the metadata."""
    signatures = {}
    if text:
        archive.add_endpoint(name, text_function, [_string_spec("text")])
        signatures[name] = _describe([_string_spec("text")], described)
    archive.add_endpoint(f"{name}_ids", ids_function, _ids_specs())
    signatures[f"{name}_ids"] = _describe(_ids_specs(), ids_described)
    return signatures


# -- classification ----------------------------------------------------------------------------


class ClassifyEndpoints(Endpoints):
    """`classify` (text -> label, label_id, probabilities, logits) and `classify_ids` (token ids
    and padding mask -> the same), for a Keras model that maps `{"token_ids", "padding_mask"}` to
    class logits. `num_classes` and `vocabulary_size` default to the model's `num_classes` and
    `encoder.vocabulary_size` (a `zoo.models.TextClassifier` has both)."""

    def __init__(self, model, label_names=None, num_classes=None, vocabulary_size=None):
        super().__init__([model])
        self.model = model
        num_classes = num_classes or model.num_classes
        self.vocabulary_size = vocabulary_size or model.encoder.vocabulary_size
        self.label_names = list(label_names or [str(i) for i in range(num_classes)])
        if len(self.label_names) != num_classes:
            raise ValueError(f"{len(self.label_names)} label names for a model with {num_classes} classes: {self.label_names}.")

    def metadata(self):
        return {"label_names": list(self.label_names)}

    def add(self, archive, preprocessor, text=True):
        model = self.model
        labels = tf.constant(self.label_names, tf.string)

        def outputs(token_ids, padding_mask):
            logits = tf.cast(model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False), tf.float32)
            label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
            return {
                "label": tf.gather(labels, label_id),
                "label_id": label_id,
                "probabilities": tf.nn.softmax(logits, axis=-1),
                "logits": logits,
            }

        def classify(text):
            return outputs(*preprocessor.pack(preprocessor.tokenize(text), pad_to_longest=True))

        def classify_ids(token_ids, padding_mask):
            return outputs(*_check_ids(token_ids, padding_mask, preprocessor.sequence_length, self.vocabulary_size))

        described = {
            "label": "string [B]", "label_id": "int32 [B]", "probabilities": "float32 [B, C]", "logits": "float32 [B, C]",
        }
        return _add_text_and_ids(archive, "classify", classify, classify_ids, described, described, text), {}


class EmbedEndpoint(Endpoints):
    """`embed`: the encoder's outputs averaged over real tokens and L2-normalised (the pooling of
    sentence-transformers models such as all-MiniLM-L6-v2); for search and clustering."""

    def __init__(self, encoder):
        super().__init__([encoder])
        self.encoder = encoder

    def add(self, archive, preprocessor, text=True):
        if not text:
            return {}, {}
        encoder = self.encoder

        def embed(text):
            token_ids, padding_mask = preprocessor.embedding_inputs(text)
            sequence = tf.cast(encoder(token_ids, padding_mask=padding_mask, training=False), tf.float32)
            weights = tf.cast(padding_mask, tf.float32)[..., None]
            pooled = tf.reduce_sum(sequence * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
            return {"embedding": tf.math.l2_normalize(pooled, axis=-1)}

        signature = [_string_spec("text")]
        archive.add_endpoint("embed", embed, signature)
        return {"embed": _describe(signature, {"embedding": "float32 [B, hidden], unit length"})}, {}


class TokenizeEndpoint(Endpoints):
    """`tokenize`: text -> the token ids and padding mask that the `seen_by` signature gives the
    model (`with_masks`: literal "[MASK]" becomes the mask id, as `fill_mask` reads it)."""

    def __init__(self, seen_by, with_masks=False):
        super().__init__([])
        self.seen_by = seen_by
        self.with_masks = with_masks

    def add(self, archive, preprocessor, text=True):
        if not text:
            return {}, {}
        split = preprocessor.tokenize_with_masks if self.with_masks else preprocessor.tokenize

        def tokenize(text):
            token_ids, padding_mask = preprocessor.pack(split(text), pad_to_longest=True)
            return {"token_ids": token_ids, "padding_mask": tf.cast(padding_mask, tf.int32)}

        signature = [_string_spec("text")]
        archive.add_endpoint("tokenize", tokenize, signature)
        described = {"token_ids": f"int32 [B, T]: what {self.seen_by} gives the model", "padding_mask": "int32 [B, T]"}
        return {"tokenize": _describe(signature, described)}, {}


# -- masked LM ---------------------------------------------------------------------------------


class FillMaskEndpoints(Endpoints):
    """`fill_mask` (text with "[MASK]"s -> the `top_k` best tokens per mask) and `fill_mask_ids`,
    for `masked_lm(inputs)`: `{"token_ids", "padding_mask", "mask_positions"}` -> logits
    `[B, M, vocabulary]` at the mask positions. `trackables`: the Keras objects it calls."""

    options = {"top_k": f"candidates returned per mask (default {DEFAULT_TOP_K})"}

    def __init__(self, masked_lm, trackables, vocabulary_size, top_k=DEFAULT_TOP_K):
        super().__init__(trackables)
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        self.masked_lm = masked_lm
        self.vocabulary_size = vocabulary_size
        self.top_k = int(top_k)

    def add(self, archive, preprocessor, text=True):
        masked_lm = self.masked_lm
        words = list(preprocessor.tokenizer.get_vocabulary())
        vocabulary = tf.constant(words, tf.string)
        k = min(self.top_k, len(words))

        def outputs(token_ids, padding_mask):
            is_mask = tf.logical_and(tf.equal(token_ids, preprocessor.mask_id), padding_mask)
            num_masks = tf.reduce_sum(tf.cast(is_mask, tf.int32), axis=1)
            every_position = tf.broadcast_to(tf.range(tf.shape(token_ids)[1]), tf.shape(token_ids))
            positions = tf.ragged.boolean_mask(every_position, is_mask)
            mask_positions = positions.to_tensor(0)  # [B, M]; padded slots point at [CLS] and are blanked below
            logits = masked_lm({"token_ids": token_ids, "padding_mask": padding_mask, "mask_positions": mask_positions})
            scores, ids = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), k=k)
            real = (tf.range(tf.shape(mask_positions)[1])[None, :] < num_masks[:, None])[:, :, None]
            real = tf.broadcast_to(real, tf.shape(ids))
            return {
                "tokens": tf.where(real, tf.gather(vocabulary, ids), ""),
                "scores": tf.where(real, scores, 0.0),
                "token_ids": tf.where(real, ids, -1),
                "num_masks": num_masks,
                "mask_positions": mask_positions,
            }

        def fill_mask(text):
            result = outputs(*preprocessor.pack(preprocessor.tokenize_with_masks(text), pad_to_longest=True))
            del result["mask_positions"]  # positions in the packed token sequence mean nothing to a text client
            return result

        def fill_mask_ids(token_ids, padding_mask):
            return outputs(*_check_ids(token_ids, padding_mask, preprocessor.sequence_length, self.vocabulary_size))

        described = {
            "tokens": f"string [B, M, {k}]", "scores": f"float32 [B, M, {k}]", "token_ids": f"int32 [B, M, {k}]",
            "num_masks": "int32 [B]",
        }
        ids_described = {**described, "mask_positions": "int32 [B, M]"}
        return _add_text_and_ids(archive, "fill_mask", fill_mask, fill_mask_ids, described, ids_described, text), {}


# -- generation ------------------------------------------------------------------------------


SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def _sampling_specs():
    # Unknown rank: a scalar (one setting for the batch) or a vector [B] (one per row).
    return [
        tf.TensorSpec(None, tf.int32, name="max_new_tokens"),
        tf.TensorSpec(None, tf.float32, name="temperature"),
        tf.TensorSpec(None, tf.int32, name="top_k"),
        tf.TensorSpec(None, tf.float32, name="top_p"),
        tf.TensorSpec(None, tf.int32, name="seed"),
    ]


def _setting_checks(rows, settings, sequence_length):
    """The checks of the generation settings (a dict of tensors) for a batch of `rows`."""
    checks = [_require(rows > 0, "the batch is empty: give at least one prompt")]
    for name, value in settings.items():
        checks.append(_require(
            tf.logical_or(tf.rank(value) == 0, tf.logical_and(tf.rank(value) == 1, tf.size(value) == rows)),
            f"{name} must be a scalar or hold one value per prompt", tf.shape(value), "got shape",
        ))
    max_new_tokens, temperature = settings["max_new_tokens"], settings["temperature"]
    top_k, top_p = settings["top_k"], settings["top_p"]
    checks += [
        _require(
            tf.logical_and(max_new_tokens >= 1, max_new_tokens <= sequence_length - 1),
            f"max_new_tokens must be between 1 and {sequence_length - 1} (the sequence_length {sequence_length} "
            "less one prompt token)", max_new_tokens,
        ),
        # Written so that NaN fails: every comparison with NaN is false.
        _require(
            tf.logical_and(tf.math.is_finite(temperature), temperature >= 0),
            "temperature must be a finite number >= 0 (0: greedy)", temperature,
        ),
        _require(top_k >= 0, "top_k must be >= 0 (0: no limit)", top_k),
        _require(tf.logical_and(top_p > 0, top_p <= 1), "top_p must be in (0, 1] (1: no limit)", top_p),
    ]
    return checks


class GenerateEndpoints(Endpoints):
    """`generate` (prompt text and sampling settings -> continuation text), `generate_ids`,
    `tokenize` (documents as the training stream holds them) and `detokenize`, for a decoder
    (`zoo.models.Decoder`) through `zoo.models.generation.generate_tokens`.

    Args:
        decoder: the decoder (the export tracks it alone: a `CausalLM` around it also holds
            its compiled generate functions, which SavedModel cannot save).
        jit_compile: compile the generation loop inside the SavedModel with XLA. Measured on a
            CPU (tiny shape, 16-token prompt + 128 new tokens), it is 4x faster than the default
            graph at batch 1 and 3.6x at batch 8, and gives the same greedy text. But the loading
            runtime compiles it again for every new batch size (seconds each), and TF Serving runs
            XLA only when built and started for it (`--xla_cpu_compilation_enabled`); hence off
            by default.
        max_new_tokens: the default `max_new_tokens` recorded in the metadata.
    """

    options = {"jit_compile": "compile the generation loop with XLA inside the SavedModel (default off)"}

    def __init__(self, decoder, jit_compile=False, max_new_tokens=32):
        super().__init__([decoder])
        self.decoder = decoder
        self.jit_compile = bool(jit_compile)
        self.max_new_tokens = int(max_new_tokens)

    def add(self, archive, preprocessor, text=True):
        from zoo.models.generation import generate_tokens

        decoder = self.decoder
        sequence_length = preprocessor.sequence_length

        def fill(buffer, lengths, max_new_tokens, temperature, top_k, top_p, seed):
            return generate_tokens(
                decoder, buffer, lengths, max_new_tokens, end_token_id=preprocessor.sep_id, temperature=temperature,
                top_k=top_k, top_p=top_p, seed=seed, pad_token_id=preprocessor.pad_id,
            )

        if self.jit_compile:
            fill = tf.function(fill, jit_compile=True)

        def per_row(value, rows):
            return tf.broadcast_to(tf.reshape(value, [-1]), tf.reshape(rows, [1]))

        def generate_new_ids(prompt_ids, settings):
            """New ids `[B, N]` (padded with 0 after the end token; N the largest max_new_tokens)
            and their counts `[B]`, for checked prompts and settings."""
            rows = prompt_ids.nrows(out_type=tf.int32)
            settings = {name: per_row(value, rows) for name, value in settings.items()}
            max_new_tokens = settings["max_new_tokens"]
            # Keep the last `keep` tokens of each prompt (left truncation).
            keep = tf.cast(sequence_length - max_new_tokens, prompt_ids.row_splits.dtype)
            lengths = prompt_ids.row_lengths()
            kept = tf.minimum(lengths, keep)
            starts = prompt_ids.row_starts() + lengths - kept
            prompt_ids = tf.RaggedTensor.from_row_lengths(
                tf.gather(prompt_ids.flat_values, tf.ragged.range(starts, starts + kept).flat_values), kept
            )
            buffer = prompt_ids.to_tensor(preprocessor.pad_id, shape=[None, sequence_length])
            lengths = tf.cast(kept, tf.int32)
            filled = fill(buffer, lengths, *(settings[name] for name in SETTINGS))
            width = tf.reduce_max(max_new_tokens)
            steps = tf.range(width)[None, :]
            positions = tf.minimum(lengths[:, None] + steps, sequence_length - 1)
            new_ids = tf.gather(filled, positions, batch_dims=1)
            # Up to and including the first end token (CausalLM.generate's rule), and no further
            # than the row's own max_new_tokens.
            ended_before = tf.cumsum(tf.cast(tf.equal(new_ids, preprocessor.sep_id), tf.int32), axis=1, exclusive=True) > 0
            ended_before = tf.logical_or(ended_before, steps >= max_new_tokens[:, None])
            new_ids = tf.where(ended_before, preprocessor.pad_id, new_ids)
            return new_ids, tf.reduce_sum(tf.cast(tf.logical_not(ended_before), tf.int32), axis=1)

        def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed):
            settings = dict(zip(SETTINGS, (max_new_tokens, temperature, top_k, top_p, seed)))
            checks = _setting_checks(tf.size(prompt), settings, sequence_length)
            prompt, *values = _checked(checks, prompt, *settings.values())
            # Documents start after an end-of-document token in training; so do prompts.
            prompt_ids = preprocessor.prompt_ids(prompt)
            new_ids, counts = generate_new_ids(prompt_ids, dict(zip(SETTINGS, values)))
            kept = tf.RaggedTensor.from_tensor(new_ids, lengths=counts)
            kept = tf.ragged.boolean_mask(kept, tf.not_equal(kept, preprocessor.sep_id))
            return {"text": preprocessor.detokenize(kept)}

        def generate_ids(token_ids, lengths, max_new_tokens, temperature, top_k, top_p, seed):
            settings = dict(zip(SETTINGS, (max_new_tokens, temperature, top_k, top_p, seed)))
            checks = _setting_checks(tf.shape(token_ids)[0], settings, sequence_length) + _rows_checks(
                token_ids, lengths, 1, decoder.vocabulary_size
            )
            token_ids, lengths, *values = _checked(checks, token_ids, lengths, *settings.values())
            prompt_ids = tf.RaggedTensor.from_tensor(token_ids, lengths=tf.cast(lengths, tf.int64))
            new_ids, counts = generate_new_ids(prompt_ids, dict(zip(SETTINGS, values)))
            return {"token_ids": new_ids, "lengths": counts}

        text_signature = [_string_spec("prompt")] + _sampling_specs()
        ids_signature = [
            tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            tf.TensorSpec([None], tf.int32, name="lengths"),
        ] + _sampling_specs()

        def tokenize(text):
            ids = preprocessor.document_ids(text)
            return {"token_ids": ids.to_tensor(preprocessor.pad_id), "lengths": tf.cast(ids.row_lengths(), tf.int32)}

        def detokenize(token_ids, lengths):
            token_ids, lengths = _checked(_rows_checks(token_ids, lengths, 0, decoder.vocabulary_size), token_ids, lengths)
            return {"text": preprocessor.detokenize(tf.RaggedTensor.from_tensor(token_ids, lengths=lengths))}

        detokenize_signature = [
            tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            tf.TensorSpec([None], tf.int32, name="lengths"),
        ]
        described = {
            "generate": _describe(text_signature, {"text": "string [B]"}),
            "generate_ids": _describe(ids_signature, {"token_ids": "int32 [B, max(max_new_tokens)]", "lengths": "int32 [B]"}),
            "tokenize": _describe([_string_spec("text")], {
                "token_ids": "int32 [B, L]: each text's tokens then the end token [SEP], as training's token stream "
                             "holds it; padded with [PAD]", "lengths": "int32 [B]"}),
            "detokenize": _describe(detokenize_signature, {"text": "string [B]: the first lengths[b] ids of each row"}),
        }
        functions = {"generate": (generate, text_signature), "generate_ids": (generate_ids, ids_signature),
                     "tokenize": (tokenize, [_string_spec("text")]), "detokenize": (detokenize, detokenize_signature)}
        names = list(functions) if text else ["generate_ids"]
        for name in names:
            archive.add_endpoint(name, *functions[name])
        signatures = {name: described[name] for name in names}
        sampling = {
            "max_new_tokens": max(1, min(self.max_new_tokens, sequence_length - 1)),
            "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0,
        }
        return signatures, {name: dict(sampling) for name in ("generate", "generate_ids") if name in names}


# -- assets ------------------------------------------------------------------------------------


WARMUP_FILE = export_files.WARMUP_FILE
WARMUP_TEXT = "def warm_up(request):"


def _warmup_inputs(signature, defaults, preprocessor):
    """Small valid inputs of a signature described in the metadata, or None for an input it
    does not know how to make. Texts are one short string; ids are [[SEP, SEP]] (valid in every
    vocabulary and for every check), settings the signature's defaults with one new token."""
    inputs = {}
    for name, spec in signature["inputs"].items():
        if spec["dtype"] == "string":
            value = np.array([WARMUP_TEXT.encode("utf-8")], dtype=object)
        elif name == "token_ids":
            value = np.full((1, 2), preprocessor.sep_id, np.int32)
        elif name == "padding_mask":
            value = np.ones((1, 2), np.int32)
        elif name == "lengths":
            value = np.array([2], np.int32)
        elif name in defaults:
            value = np.array(1 if name == "max_new_tokens" else defaults[name], dtype=spec["dtype"])
        else:
            return None
        inputs[name] = value
    return inputs


def write_warmup_requests(directory, model_name, signatures, defaults, preprocessor):
    """Writes `assets.extra/tf_serving_warmup_requests`: a TFRecord of TF Serving `PredictionLog`s,
    one `PredictRequest` per signature (`serving_default` aside: the same function), which TF
    Serving replays when it loads the version. Returns the file's path and the signature names."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(directory, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    written = []
    with tf.io.TFRecordWriter(path) as writer:
        for name, signature in signatures.items():
            if name == "serving_default":
                continue
            inputs = _warmup_inputs(signature, defaults.get(name, {}), preprocessor)
            if inputs is None:
                continue
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
            for input_name, value in inputs.items():
                request.inputs[input_name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
            written.append(name)
    return path, written


def _write_assets(directory, preprocessor, metadata, metrics):
    from zoo.data.tokenizer import save_tokenizer

    assets = os.path.join(directory, "assets")
    tokenizer = preprocessor.tokenizer
    save_tokenizer(tokenizer, assets)  # vocab.txt and tokenizer.json
    metadata = {
        "format": METADATA_FORMAT,
        **metadata,
        "metrics": {str(k): _json_number(v) for k, v in (metrics or {}).items()} or None,
        "special_tokens": {t: tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")},
        "preprocessor": preprocessor.describe(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    with open(os.path.join(assets, METADATA_FILE), "w", encoding="utf-8") as f:
        # Strict JSON: other languages' parsers reject NaN and Infinity.
        json.dump(_strict_json(metadata), f, indent=2, allow_nan=False)
        f.write("\n")


def _json_number(value):
    if value is None:
        return None  # a metric without a value (strict JSON null), not the string "None"
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _strict_json(value):
    """`value` with every non-finite float (NaN, +-Infinity) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def _versions():
    import keras_hub
    import tensorflow_text

    import zoo

    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_text": tensorflow_text.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "zoo": zoo.__version__,
    }
