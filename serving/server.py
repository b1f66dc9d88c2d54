"""An HTTP server for zoo exports that speaks TensorFlow Serving's REST API.

Exports live in TF Serving's layout, `EXPORT_ROOT/<model name>/<integer version>/` (what
`zoo export` writes). The server is a WSGI application (`make_app`) run by werkzeug's threaded
server (`make_server`, `serve`), so requests are answered concurrently; the SavedModels are
loaded with `tf.saved_model.load` (TensorFlow + tensorflow_text, no Keras, no zoo model code)
and their signatures are safe to call from several threads.

Endpoints (as TF Serving's; see https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signatures, plus the export's zoo metadata
    POST /v1/models/<name>[/versions/<v>]:predict    run a signature

Without a version, the highest version on disk is used; a version that appears later is loaded
on its first request, and loaded versions stay in memory. A version that fails to load (one
still being copied in, say) answers 503 until its directory changes; the next request after a
change tries again.

A predict body is `{"signature_name": ..., "instances": [...]}` (row format: each instance is a
value of the signature's one batched input, or an object of named inputs) answered by
`{"predictions": [...]}`, or `{"signature_name": ..., "inputs": ...}` (columnar: a value or an
object of named inputs) answered by `{"outputs": ...}`. `signature_name` defaults to
`serving_default`. Generation settings (`max_new_tokens`, `temperature`, `top_k`, `top_p`,
`seed`) may be left out: the export's `signature_defaults` fill them in. In row format they may
differ between instances; an export whose settings take one value per row (every current
export) runs all instances as one batch, an older export with scalar settings one batch per
distinct setting. String values may also be given as `{"b64": "..."}`.

Every failure is a JSON `{"error": "..."}` of one line, with a 4xx status for a bad request:
400 for malformed HTTP, JSON, types, shapes or values (every value a signature checks is
reported with the rule it breaks), 404 for an unknown model or version, 405 for a wrong
method, 408 for a request not received in time, 413 for a body over `max_body_bytes`. 503
means the server is busy (more predictions running and queued than it takes; with
Retry-After) or the model failed to load; 500 is kept for faults of the server itself. Errors
name no server paths and no other models; the server log has the details.

Resources are bounded: a request must arrive within `read_deadline` seconds in all and with no
silence longer than `request_timeout`; at most `max_concurrent` predictions run at once, with
up to `max_queue` more waiting (at most `queue_timeout` seconds each) and any further ones
answered 503 at once.
"""

import base64
import collections
import io
import json
import logging
import os
import re
import sys
import threading
import time

import numpy as np

from zoo.export_files import (  # noqa: F401 - ExportLoadError and read_export_metadata: part of this module's API
    ExportLoadError, graph_error_text, load_export_directory, read_export_metadata, replay_warmup_requests,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8501
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 20.0  # seconds a connection may stay silent while a request is read
DEFAULT_READ_DEADLINE = 60.0  # seconds to receive a whole request (line, headers and body)
DEFAULT_MAX_CONCURRENT = 4  # predictions running at once (each uses every core: more only queue inside TF)
DEFAULT_MAX_QUEUE = 64  # predictions waiting for a slot; more are answered 503
DEFAULT_QUEUE_TIMEOUT = 30.0  # seconds a prediction waits for a slot before a 503
DEFAULT_SIGNATURE = "serving_default"
METADATA_FILE = "zoo_metadata.json"
MAX_JSON_DEPTH = 32  # tensors of rank <= 30 inside an object inside a list: more is an attack or a mistake

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[0-9]{1,18}")
_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?"
)


class RequestError(Exception):
    """A request the server cannot answer, with its HTTP status (and headers, e.g. Retry-After)."""

    def __init__(self, message, status=400, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def _clip(text, limit=80):
    """`text` shortened for an error message (names and paths come from the client)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text):
    return " ".join(str(text).split())


class Servable:
    """One loaded version of a model: its signatures, their input specs and the export's metadata."""

    def __init__(self, name, version, directory):
        self.name = name
        self.version = version
        self.directory = directory
        self._loaded, self.metadata = load_export_directory(directory)  # the signatures need the object alive
        self.signatures = dict(self._loaded.signatures)
        self.warmed_up = replay_warmup_requests(self._loaded, directory)

    def input_specs(self, signature_name):
        """{input name: tf.TensorSpec} of a signature."""
        return dict(self.signatures[signature_name].structured_input_signature[1])

    def defaults(self, signature_name):
        defaults = (self.metadata.get("signature_defaults") or {}).get(signature_name) or {}
        return dict(defaults) if isinstance(defaults, dict) else {}


def _fingerprint(directory, limit=10_000):
    """(path, size, mtime) of the files of a version directory: a load that failed is retried
    once this changes (a copy completed, a file replaced)."""
    entries = []
    for root, directories, files in os.walk(directory):
        directories.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                status = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, directory), status.st_size, status.st_mtime_ns))
            if len(entries) >= limit:
                return tuple(entries)
    return tuple(entries)


class ModelRepository:
    """The exports under `root`, loaded on first use (thread-safe)."""

    def __init__(self, root):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"Export root {root!r} is not a directory; expected EXPORT_ROOT/<model name>/<version>/."
            )
        self.root = root
        self._servables = {}
        self._failures = {}  # (name, version) -> (fingerprint of the directory when it failed, message)
        self._lock = threading.Lock()
        self._loading = {}

    def model_names(self):
        return sorted(
            name for name in os.listdir(self.root)
            if _MODEL_NAME.fullmatch(name) and os.path.isdir(os.path.join(self.root, name)) and self.versions(name)
        )

    def versions(self, name):
        """Integer versions of a model on disk, ascending (directories holding a saved_model.pb)."""
        directory = os.path.join(self.root, name)
        if not _MODEL_NAME.fullmatch(name) or not os.path.isdir(directory):
            return []
        return sorted(
            int(entry) for entry in os.listdir(directory)
            if _VERSION.fullmatch(entry) and os.path.isfile(os.path.join(directory, entry, "saved_model.pb"))
        )

    def loaded_versions(self, name):
        with self._lock:
            return sorted(version for (model, version) in self._servables if model == name)

    def get(self, name, version=None):
        """The servable for `name` at `version` (None: the latest), loading it if needed."""
        versions = self.versions(name)
        if not versions:
            # Other models' names are not listed: a client may only probe names it knows.
            raise RequestError(f"Model {_clip(name)!r} not found under the export root.", 404)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise RequestError(
                f"Version {version} of model {name!r} not found (versions: {', '.join(map(str, versions))}).", 404
            )
        key = (name, version)
        directory = os.path.join(self.root, name, str(version))
        with self._lock:
            if key in self._servables:
                return self._servables[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads; the others wait for it
            with self._lock:
                if key in self._servables:
                    return self._servables[key]
                failure = self._failures.get(key)
            fingerprint = _fingerprint(directory)  # before loading: a change while loading shows next time
            if failure is not None and failure[0] == fingerprint:
                raise RequestError(failure[1], 503)
            try:
                servable = Servable(name, version, directory)
            except ExportLoadError as error:
                logger.error("Loading %s version %s failed: %s", name, version, error)
                message = f"Model {name!r} version {version} failed to load: {error.public_text()}."
            except Exception:  # anything else: the log has the traceback, the client a line
                logger.exception("Loading %s version %s failed", name, version)
                message = f"Model {name!r} version {version} failed to load; the server log has the details."
            else:
                with self._lock:
                    self._servables[key] = servable
                    self._failures.pop(key, None)
                return servable
            with self._lock:
                self._failures[key] = (fingerprint, message)
            raise RequestError(message, 503)


# -- bounded work ------------------------------------------------------------------------------


class WorkLimiter:
    """At most `max_running` holders at once, up to `max_waiting` more waiting in arrival order
    (each at most `wait_timeout` seconds); any further one gets a 503 with Retry-After."""

    def __init__(self, max_running=DEFAULT_MAX_CONCURRENT, max_waiting=DEFAULT_MAX_QUEUE, wait_timeout=DEFAULT_QUEUE_TIMEOUT):
        if max_running < 1 or max_waiting < 0 or wait_timeout < 0:
            raise ValueError(
                f"max_concurrent must be >= 1, max_queue >= 0 and queue_timeout >= 0; got {max_running}, {max_waiting}, {wait_timeout}."
            )
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = collections.deque()

    def _busy(self, why):
        return RequestError(
            f"The server is busy ({why}); retry shortly.", 503, headers={"Retry-After": "1"}
        )

    def __enter__(self):
        with self._lock:
            if self._running < self.max_running and not self._waiting:
                self._running += 1
                return self
            if len(self._waiting) >= self.max_waiting:
                raise self._busy(f"{self.max_running} predictions running and {len(self._waiting)} waiting")
            ticket = threading.Event()
            self._waiting.append(ticket)
        if ticket.wait(self.wait_timeout):
            return self  # a finishing prediction handed its slot over
        with self._lock:
            if ticket.is_set():  # handed over just as the wait ended
                return self
            self._waiting.remove(ticket)
        raise self._busy(f"no prediction slot freed up within {self.wait_timeout:g} s")

    def __exit__(self, *exc_info):
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes to the longest waiter
            else:
                self._running -= 1
        return False


# -- JSON to tensors and back ------------------------------------------------------------------


def _decode_strings(value, where):
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as error:  # JSON allows "\ud800", which is no character
            raise RequestError(f"{where}: a string holds an unpaired surrogate ({error.reason}); send valid Unicode.") from error
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise RequestError(f"{where}: invalid base64: {error}") from error
    if isinstance(value, list):
        return [_decode_strings(item, where) for item in value]
    raise RequestError(f"{where} expects strings, got {type(value).__name__} {_short(value)}.")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _too_deep(value, limit):
    """Whether lists and objects nest more than `limit` levels deep (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


def _to_array(value, spec, where):
    """A numpy array for a TensorSpec from JSON, or a RequestError naming what is wrong."""
    import tensorflow as tf

    if spec.dtype == tf.string:
        try:
            array = np.array(_decode_strings(value, where), dtype=object)
        except ValueError as error:  # ragged nesting
            raise RequestError(f"{where}: nested lists must be rectangular ({error}).") from error
        if any(not isinstance(item, bytes) for item in array.flat):
            raise RequestError(f"{where}: nested lists must be rectangular.")
    else:
        try:
            array = np.array(value)
        except (ValueError, OverflowError) as error:  # ragged nesting, or a number beyond any dtype
            raise RequestError(f"{where}: nested lists must be rectangular numbers ({error}).") from error
        kind = array.dtype.kind
        if spec.dtype.is_bool:
            if kind != "b":
                raise RequestError(f"{where} expects booleans, got {_short(value)}.")
        elif spec.dtype.is_integer:
            if kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
                if np.any(np.abs(array) > 2.0**62):
                    raise RequestError(f"{where}: value out of range for {spec.dtype.name}.")
                array = array.astype(np.int64)
            elif kind not in "iu" and not (kind == "f" and array.size == 0):
                raise RequestError(f"{where} expects integers ({spec.dtype.name}), got {_short(value)}.")
            info = np.iinfo(spec.dtype.as_numpy_dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise RequestError(f"{where}: value out of range for {spec.dtype.name}.")
        elif spec.dtype.is_floating:
            if kind not in "iuf":
                raise RequestError(f"{where} expects numbers ({spec.dtype.name}), got {_short(value)}.")
        array = array.astype(spec.dtype.as_numpy_dtype)
    shape = spec.shape
    if shape.rank is not None:
        if array.ndim != shape.rank:
            raise RequestError(
                f"{where} expects a tensor of rank {shape.rank} (shape {_shape_text(shape)}), got shape {list(array.shape)}."
            )
        for expected, actual in zip(shape.as_list(), array.shape):
            if expected is not None and expected != actual:
                raise RequestError(f"{where} expects shape {_shape_text(shape)}, got {list(array.shape)}.")
    return array


def _shape_text(shape):
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + "]"


def _to_json(tensor):
    import tensorflow as tf

    value = tensor.numpy().tolist()
    if tensor.dtype == tf.string:
        return tf.nest.map_structure(lambda b: b.decode("utf-8", errors="replace"), value)
    return value


# -- predict -----------------------------------------------------------------------------------


class _Inputs:
    """A signature's inputs by role: `batched` (required, one value per instance), `stacked`
    (settings with a default and a per-row shape: one value per instance, stacked into [B]) and
    `grouped` (settings of shape []: instances sharing them run as one batch; older exports)."""

    def __init__(self, specs, defaults):
        self.specs = specs
        self.defaults = {name: value for name, value in defaults.items() if name in specs}
        self.batched = [name for name, spec in specs.items() if spec.shape.rank != 0 and name not in self.defaults]
        self.stacked = [name for name, spec in specs.items() if spec.shape.rank != 0 and name in self.defaults]
        self.grouped = [name for name, spec in specs.items() if spec.shape.rank == 0]


def predict(servable, body, max_batch=DEFAULT_MAX_BATCH, limiter=None):
    """Answers a parsed predict request body (a dict) with a JSON-able dict, or raises RequestError.

    Every input is converted and checked before `limiter` (a WorkLimiter) is entered to run
    the signature.
    """
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object with \"instances\" or \"inputs\".")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(
            f"Unknown request field(s) {_clip(', '.join(map(repr, unknown)))}; expected signature_name and instances or inputs."
        )
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("Give exactly one of \"instances\" (row format) or \"inputs\" (columnar format).")
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str) or signature_name not in servable.signatures:
        available = ", ".join(sorted(servable.signatures))
        raise RequestError(
            f"Serving signature name {_clip(signature_name)!r} not found in model {servable.name!r} (signatures: {available})."
        )
    inputs = _Inputs(servable.input_specs(signature_name), servable.defaults(signature_name))
    function = servable.signatures[signature_name]
    if "instances" in body:
        batches, assemble = _rows(inputs, body["instances"], max_batch)
    else:
        batches, assemble = _columns(inputs, body["inputs"], max_batch)
    with limiter if limiter is not None else _no_limit():
        outputs = [_call(function, tensors) for tensors in batches]
    return assemble(outputs)


class _no_limit:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


def _rows(inputs, instances, max_batch):
    """The tensors of each batch to run for row-format `instances`, and how to put the answers together."""
    import tensorflow as tf

    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list.")
    if len(instances) > max_batch:
        raise RequestError(f"Too many instances: {len(instances)} (this server takes at most {max_batch} per request).")
    specs, batched = inputs.specs, inputs.batched
    rows = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and not (set(instance) == {"b64"} and len(batched) == 1):
            unknown = sorted(set(instance) - set(specs))
            if unknown:
                raise RequestError(
                    f"instances[{index}]: unknown input(s) {_clip(', '.join(map(repr, unknown)))}; "
                    f"inputs: {', '.join(sorted(specs))}."
                )
            rows.append(dict(instance))
        elif len(batched) == 1:
            rows.append({batched[0]: instance})
        else:
            raise RequestError(f"instances[{index}] must be an object naming the inputs {', '.join(sorted(batched))}.")
    stacked = {name: [] for name in inputs.stacked}
    groups = {}
    for index, row in enumerate(rows):
        missing = [name for name in batched if name not in row]
        if missing:
            raise RequestError(f"instances[{index}] lacks input(s) {', '.join(map(repr, missing))}.")
        for name in inputs.stacked:  # one value per row, whatever the others hold: one batch
            scalar = tf.TensorSpec([], specs[name].dtype)
            stacked[name].append(_to_array(row.get(name, inputs.defaults[name]), scalar, f"instances[{index}].{name}").item())
        settings = []
        for name in inputs.grouped:
            value = row.get(name, inputs.defaults.get(name))
            if value is None:
                raise RequestError(f"instances[{index}] lacks input {name!r} (no default in the export).")
            settings.append(_to_array(value, specs[name], f"instances[{index}].{name}").item())
        groups.setdefault(tuple(settings), []).append(index)
    batches = []
    for settings, indices in groups.items():
        tensors = {
            name: _to_array([rows[i][name] for i in indices], specs[name], f"instances[*].{name}") for name in batched
        }
        for name in inputs.stacked:
            tensors[name] = np.array([stacked[name][i] for i in indices], specs[name].dtype.as_numpy_dtype)
        for name, value in zip(inputs.grouped, settings):
            tensors[name] = np.asarray(value, specs[name].dtype.as_numpy_dtype)
        batches.append(tensors)

    def assemble(outputs):
        predictions = [None] * len(rows)
        for indices, answer in zip(groups.values(), outputs):
            for position, index in enumerate(indices):
                row = {name: value[position] if isinstance(value, list) else value for name, value in answer.items()}
                predictions[index] = next(iter(row.values())) if len(row) == 1 else row
        return {"predictions": predictions}

    return batches, assemble


def _columns(inputs, values, max_batch):
    """The one batch of tensors for columnar `values`, and how to put the answer together."""
    specs, batched = inputs.specs, inputs.batched
    if not isinstance(values, dict) or (len(batched) == 1 and set(values) == {"b64"}):
        if len(batched) != 1:
            raise RequestError(f"\"inputs\" must be an object naming the inputs {', '.join(sorted(specs))}.")
        values = {batched[0]: values}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise RequestError(f"Unknown input(s) {_clip(', '.join(map(repr, unknown)))}; inputs: {', '.join(sorted(specs))}.")
    tensors = {}
    for name, spec in specs.items():
        value = values.get(name, inputs.defaults.get(name))
        if value is None:
            raise RequestError(f"Missing input {name!r}.")
        tensors[name] = _to_array(value, spec, f"inputs.{name}")
    for name in batched:
        rows = tensors[name].shape[0]
        if rows == 0:
            raise RequestError(f"inputs.{name} is empty: give at least one instance.")
        if rows > max_batch:
            raise RequestError(f"Too many instances: {rows} (this server takes at most {max_batch} per request).")

    def assemble(outputs):
        (answer,) = outputs
        return {"outputs": next(iter(answer.values())) if len(answer) == 1 else answer}

    return [tensors], assemble


def _call(function, arrays):
    import tensorflow as tf

    specs = function.structured_input_signature[1]
    tensors = {name: tf.constant(array, dtype=specs[name].dtype) for name, array in arrays.items()}
    try:
        outputs = function(**tensors)
    except tf.errors.InvalidArgumentError as error:  # the signature's own checks, or a kernel's
        raise RequestError(graph_error_text(error.message)) from error
    except tf.errors.ResourceExhaustedError as error:  # memory: too much at once, not a bad request
        logger.error("Out of memory running a prediction: %s", _one_line(error.message)[:300])
        raise RequestError("The server ran out of memory for this request; retry later or send fewer instances.",
                           503, headers={"Retry-After": "1"}) from error
    return {name: _to_json(tensor) for name, tensor in sorted(outputs.items())}


# -- status and metadata -----------------------------------------------------------------------


def _status(repository, name, version):
    """TF Serving's model_version_status: the requested (else the latest) version, loaded now if
    it is not yet, and any other loaded versions."""
    try:
        servable = repository.get(name, version)
        shown, failure = servable.version, None
    except RequestError as error:
        if error.status != 503:
            raise
        shown, failure = version if version is not None else repository.versions(name)[-1], str(error)
    versions = sorted(set(repository.loaded_versions(name)) | {shown}, reverse=True) if version is None else [shown]
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": "END" if failure and v == shown else "AVAILABLE",
                "status": {"error_code": "UNKNOWN", "error_message": failure} if failure and v == shown
                else {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
    }


def _metadata(servable):
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    def tensor_info(spec, name):
        known = spec.shape.as_list() if spec.shape.rank is not None else []
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in known]
        return {
            "dtype": types_pb2.DataType.Name(tf.as_dtype(spec.dtype).as_datatype_enum),
            "tensor_shape": {"dim": dims, "unknown_rank": spec.shape.rank is None},
            "name": name,
        }

    signature_def = {}
    for signature_name, function in sorted(servable.signatures.items()):
        signature_def[signature_name] = {
            "inputs": {name: tensor_info(spec, name) for name, spec in function.structured_input_signature[1].items()},
            "outputs": {name: tensor_info(spec, name) for name, spec in function.structured_outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": {"signature_def": signature_def}, "zoo": servable.metadata},
    }


# -- the WSGI application and the server -------------------------------------------------------


def _read_body(environ, max_body_bytes):
    """The request body, read within the connection's deadline; RequestError for a body that is
    too large, shorter than its Content-Length, malformed (chunking) or late."""
    stream = environ["wsgi.input"]
    # (werkzeug closes every connection after its answer: no Connection header needed.)
    too_large = RequestError(f"Request body exceeds the limit of {max_body_bytes} bytes.", 413)

    def read_up_to(size):
        parts, count = [], 0
        while count < size:
            part = stream.read(min(size - count, 1 << 16))
            if not part:
                break
            parts.append(part)
            count += len(part)
        return b"".join(parts)

    try:
        if environ.get("wsgi.input_terminated"):  # chunked: the server de-chunks; read to the end
            data = read_up_to(max_body_bytes + 1)
            if len(data) > max_body_bytes:
                raise too_large
            return data
        length_text = environ.get("CONTENT_LENGTH") or ""
        if not length_text:
            return b""
        if not (length_text.isascii() and length_text.isdigit()):
            raise RequestError(f"Invalid Content-Length {_clip(length_text, 40)!r}: expected a number of bytes.")
        length = int(length_text)
        if length > max_body_bytes:
            raise too_large
        data = read_up_to(length)
        if len(data) < length:
            raise RequestError(f"The request body ended after {len(data)} of the {length} bytes of its Content-Length.")
        return data
    except TimeoutError as error:  # silent too long, or the whole request late
        raise RequestError(f"The request was not received in time ({error}).", 408) from error
    except ConnectionError:
        raise  # the client is gone: nobody to answer
    except OSError as error:  # werkzeug's de-chunking: "Invalid chunk header" and the like
        raise RequestError(f"Malformed chunked request body: {error}.") from error


def _parse_json(data):
    try:
        body = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RequestError(f"Malformed JSON in the request body: it is not UTF-8 ({error}).") from error
    except RecursionError as error:
        raise RequestError(f"Malformed JSON in the request body: nested more than {MAX_JSON_DEPTH} levels deep.") from error
    except ValueError as error:  # JSONDecodeError, and integers of more than 4300 digits
        raise RequestError(f"Malformed JSON in the request body: {error}.") from error
    if isinstance(body, (list, dict)) and _too_deep(body, MAX_JSON_DEPTH):
        raise RequestError(f"Malformed JSON in the request body: nested more than {MAX_JSON_DEPTH} levels deep.")
    return body


def make_app(
    export_root,
    max_batch=DEFAULT_MAX_BATCH,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    preload=True,
    max_concurrent=DEFAULT_MAX_CONCURRENT,
    max_queue=DEFAULT_MAX_QUEUE,
    queue_timeout=DEFAULT_QUEUE_TIMEOUT,
):
    """The WSGI application serving the exports under `export_root` (for any WSGI server)."""
    from werkzeug.wrappers import Request, Response

    repository = ModelRepository(export_root)
    limiter = WorkLimiter(max_concurrent, max_queue, queue_timeout)
    if preload:  # load each model's latest version now: errors show at start, first requests are fast
        for name in repository.model_names():
            try:
                repository.get(name)
            except RequestError as error:
                logger.error("%s", error)

    def respond(payload, status=200, headers=None):
        response = Response(json.dumps(payload, ensure_ascii=False) + "\n", status=status, mimetype="application/json")
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    def handle(request):
        match = _PATH.fullmatch(request.path)
        if not match:
            raise RequestError(
                f"No such endpoint: {request.method} {_clip(request.path)}. "
                "Try GET /v1/models/<name> or POST /v1/models/<name>:predict.", 404,
            )
        name, version_text, metadata, verb = match.group("name", "version", "metadata", "verb")
        version = None
        if version_text is not None:
            if not _VERSION.fullmatch(version_text):
                raise RequestError(f"Version must be a non-negative integer of ASCII digits, got {_clip(version_text, 40)!r}.", 400)
            version = int(version_text)
        if verb is None:
            if request.method != "GET":
                raise RequestError(f"{_clip(request.method, 20)} is not allowed here; use GET.", 405)
            if metadata:
                return respond(_metadata(repository.get(name, version)))
            return respond(_status(repository, name, version))
        if verb != "predict":
            raise RequestError(
                f"Unsupported verb :{_clip(verb, 20)}; this server implements :predict (classify and regress take tf.Examples).", 400
            )
        if request.method != "POST":
            raise RequestError(f"{_clip(request.method, 20)} is not allowed for :predict; use POST.", 405)
        body = _parse_json(_read_body(request.environ, max_body_bytes))
        servable = repository.get(name, version)
        return respond(predict(servable, body, max_batch=max_batch, limiter=limiter))

    def app(environ, start_response):
        request = Request(environ)
        try:
            response = handle(request)
        except RequestError as error:
            response = respond({"error": _one_line(error)}, error.status, error.headers)
        except RecursionError:  # a structure nested deeper than anything above caught
            response = respond({"error": f"The request nests more than {MAX_JSON_DEPTH} levels deep."}, 400)
        except Exception:  # a bug or a TensorFlow failure: answer, log, keep serving
            logger.exception("Error serving %s %s", request.method, _clip(request.path))
            response = respond({"error": "Internal server error; the server log has the details."}, 500)
        return response(environ, start_response)

    app.repository = repository
    app.limiter = limiter
    return app


class _DeadlineReader(io.RawIOBase):
    """A connection's incoming bytes, each read waiting at most `idle` seconds and none past
    `deadline` (time.monotonic()): a client dripping a byte at a time cannot hold a thread for
    longer than the deadline, which a per-read timeout alone allows."""

    def __init__(self, connection, deadline, idle):
        self._connection = connection
        self._deadline = deadline
        self._idle = idle

    def readable(self):
        return True

    def readinto(self, buffer):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took longer than the server's read deadline")
        self._connection.settimeout(min(self._idle, remaining))
        try:
            return self._connection.recv_into(buffer)
        finally:
            try:
                self._connection.settimeout(self._idle)  # writing the answer: the idle timeout only
            except OSError:
                pass


def make_server(
    export_root,
    host="127.0.0.1",
    port=DEFAULT_PORT,
    max_batch=DEFAULT_MAX_BATCH,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    request_timeout=DEFAULT_REQUEST_TIMEOUT,
    read_deadline=DEFAULT_READ_DEADLINE,
    max_concurrent=DEFAULT_MAX_CONCURRENT,
    max_queue=DEFAULT_MAX_QUEUE,
    queue_timeout=DEFAULT_QUEUE_TIMEOUT,
    preload=True,
):
    """A threaded werkzeug server (not yet serving) for the exports under `export_root`.

    Call `serve_forever()` on it (and `shutdown()` from another thread to stop). Port 0 picks a
    free port: read it from `server.port`. Loopback only unless `host` says otherwise.
    """
    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as werkzeug_make_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535 (0: any free port), got {port!r}.")
    if not request_timeout > 0 or not read_deadline > 0:
        raise ValueError(f"request_timeout and read_deadline must be > 0 seconds, got {request_timeout} and {read_deadline}.")

    class Handler(WSGIRequestHandler):
        timeout = request_timeout  # a client that stops sending mid-request is dropped, not waited on forever

        def setup(self):
            super().setup()
            # werkzeug answers one request per connection (Connection: close), so the deadline
            # covers the request line, the headers and the body.
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + read_deadline, request_timeout))

        def log_request(self, code="-", size="-"):
            logger.info("%s %s %s", self.command, _clip(getattr(self, "path", "-")), code)

        def send_error(self, code, message=None, explain=None):
            # http.server's own refusals (a malformed request line, too many or too long
            # headers) answer in HTML; answer them as every other error: one line of JSON.
            short = self.responses.get(code, ("Error",))[0]
            body = (json.dumps({"error": f"{_one_line(message or short).rstrip('.')}."}) + "\n").encode()
            self.log_error("code %d, message %s", code, _one_line(message or short))
            self.send_response(code, short)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
            self.close_connection = True

    app = make_app(
        export_root, max_batch=max_batch, max_body_bytes=max_body_bytes, preload=preload,
        max_concurrent=max_concurrent, max_queue=max_queue, queue_timeout=queue_timeout,
    )
    server = werkzeug_make_server(host, port, app, threaded=True, request_handler=Handler)
    server.app = app
    return server


def serve(export_root, host="127.0.0.1", port=DEFAULT_PORT, **options):
    """Serves the exports under `export_root` until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    if not logging.getLogger().handlers:  # a command-line run: show the access log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = make_server(export_root, host=host, port=port, **options)

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)  # a supervisor's stop: close the socket as Ctrl-C does
    models = server.app.repository.model_names()
    address = f"http://{host}:{server.port}/v1/models/<name>"
    print(f"Serving {', '.join(models) or 'no models yet'} from {export_root} at {address}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
