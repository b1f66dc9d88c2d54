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
on its first request, and loaded versions stay in memory. A predict body is
`{"signature_name": ..., "instances": [...]}` (row format: each instance is a value of the
signature's one batched input, or an object of named inputs) answered by
`{"predictions": [...]}`, or `{"signature_name": ..., "inputs": ...}` (columnar: a value or an
object of named inputs) answered by `{"outputs": ...}`. `signature_name` defaults to
`serving_default`. Scalar inputs (generation's `max_new_tokens`, `temperature`, `top_k`,
`top_p`, `seed`) may be left out: the export's `signature_defaults` fill them in. In row format
they may differ between instances (instances sharing settings run as one batch). String values
may also be given as `{"b64": "..."}`.

Every failure is a JSON `{"error": "..."}` with a 4xx status for a bad request (malformed JSON,
wrong types or shapes, unknown model, version or signature, more than `max_batch` instances: 400
or 404; a body over `max_body_bytes`: 413) and 5xx only for a failure of the server itself.
"""

import base64
import json
import logging
import os
import re
import sys
import threading

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8501
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds a connection may stay silent while a request is read
DEFAULT_SIGNATURE = "serving_default"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)


class RequestError(Exception):
    """A request the server cannot answer, with its HTTP status."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# -- loaded exports ----------------------------------------------------------------------------


class Servable:
    """One loaded version of a model: its signatures, their input specs and the export's metadata."""

    def __init__(self, name, version, directory):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the ops the tokenizer needs

        self.name = name
        self.version = version
        self.directory = directory
        self._loaded = tf.saved_model.load(directory)  # the signatures need the object alive
        self.signatures = dict(self._loaded.signatures)
        self.metadata = {}
        metadata_path = os.path.join(directory, "assets", "zoo_metadata.json")
        if os.path.exists(metadata_path):
            with open(metadata_path, encoding="utf-8") as f:
                self.metadata = json.load(f)

    def input_specs(self, signature_name):
        """{input name: tf.TensorSpec} of a signature."""
        return dict(self.signatures[signature_name].structured_input_signature[1])

    def defaults(self, signature_name):
        return dict((self.metadata.get("signature_defaults") or {}).get(signature_name) or {})


class ModelRepository:
    """The exports under `root`, loaded on first use (thread-safe)."""

    def __init__(self, root):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"Export root {root!r} is not a directory; expected EXPORT_ROOT/<model name>/<version>/."
            )
        self.root = root
        self._servables = {}
        self._failures = {}
        self._lock = threading.Lock()
        self._loading = {}

    def model_names(self):
        return sorted(
            name for name in os.listdir(self.root)
            if _MODEL_NAME.match(name) and os.path.isdir(os.path.join(self.root, name)) and self.versions(name)
        )

    def versions(self, name):
        """Integer versions of a model on disk, ascending (directories holding a saved_model.pb)."""
        directory = os.path.join(self.root, name)
        if not _MODEL_NAME.match(name) or not os.path.isdir(directory):
            return []
        return sorted(
            int(entry) for entry in os.listdir(directory)
            if entry.isdigit() and os.path.isfile(os.path.join(directory, entry, "saved_model.pb"))
        )

    def loaded_versions(self, name):
        with self._lock:
            return sorted(version for (model, version) in self._servables if model == name)

    def get(self, name, version=None):
        """The servable for `name` at `version` (None: the latest), loading it if needed."""
        versions = self.versions(name)
        if not versions:
            available = ", ".join(self.model_names()) or "none"
            raise RequestError(f"Model {name!r} not found under the export root (models: {available}).", 404)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise RequestError(
                f"Version {version} of model {name!r} not found (versions: {', '.join(map(str, versions))}).", 404
            )
        key = (name, version)
        with self._lock:
            if key in self._servables:
                return self._servables[key]
            if key in self._failures:
                raise RequestError(f"Model {name!r} version {version} failed to load: {self._failures[key]}", 503)
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads; the others wait for it
            with self._lock:
                if key in self._servables:
                    return self._servables[key]
            try:
                servable = Servable(name, version, os.path.join(self.root, name, str(version)))
            except Exception as error:  # a corrupt export: report it, keep serving the others
                logger.exception("Loading %s version %s failed", name, version)
                with self._lock:
                    self._failures[key] = f"{type(error).__name__}: {error}"
                raise RequestError(f"Model {name!r} version {version} failed to load: {error}", 503) from error
            with self._lock:
                self._servables[key] = servable
            return servable


# -- JSON to tensors and back ------------------------------------------------------------------


def _decode_strings(value, where):
    if isinstance(value, str):
        return value.encode("utf-8")
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
        except ValueError as error:  # ragged nesting
            raise RequestError(f"{where}: nested lists must be rectangular ({error}).") from error
        kind = array.dtype.kind
        if spec.dtype.is_bool:
            if kind != "b":
                raise RequestError(f"{where} expects booleans, got {_short(value)}.")
        elif spec.dtype.is_integer:
            if kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
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


def predict(servable, body, max_batch=DEFAULT_MAX_BATCH):
    """Answers a parsed predict request body (a dict) with a JSON-able dict, or raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object with \"instances\" or \"inputs\".")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(
            f"Unknown request field(s) {', '.join(map(repr, unknown))}; expected signature_name and instances or inputs."
        )
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("Give exactly one of \"instances\" (row format) or \"inputs\" (columnar format).")
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str) or signature_name not in servable.signatures:
        available = ", ".join(sorted(servable.signatures))
        raise RequestError(
            f"Serving signature name {signature_name!r} not found in model {servable.name!r} (signatures: {available})."
        )
    specs = servable.input_specs(signature_name)
    batched = [name for name, spec in specs.items() if spec.shape.rank != 0]
    scalars = [name for name, spec in specs.items() if spec.shape.rank == 0]
    defaults = servable.defaults(signature_name)
    function = servable.signatures[signature_name]
    if "instances" in body:
        return {"predictions": _predict_rows(function, specs, batched, scalars, defaults, body["instances"], max_batch)}
    return {"outputs": _predict_columns(function, specs, batched, scalars, defaults, body["inputs"], max_batch)}


def _predict_rows(function, specs, batched, scalars, defaults, instances, max_batch):
    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list.")
    if len(instances) > max_batch:
        raise RequestError(f"Too many instances: {len(instances)} (this server takes at most {max_batch} per request).")
    rows = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and not (set(instance) == {"b64"} and len(batched) == 1):
            unknown = sorted(set(instance) - set(specs))
            if unknown:
                raise RequestError(
                    f"instances[{index}]: unknown input(s) {', '.join(map(repr, unknown))}; "
                    f"inputs: {', '.join(sorted(specs))}."
                )
            rows.append(dict(instance))
        elif len(batched) == 1:
            rows.append({batched[0]: instance})
        else:
            raise RequestError(f"instances[{index}] must be an object naming the inputs {', '.join(sorted(batched))}.")
    # Instances with the same scalar settings run as one batch.
    groups = {}
    for index, row in enumerate(rows):
        missing = [name for name in batched if name not in row]
        if missing:
            raise RequestError(f"instances[{index}] lacks input(s) {', '.join(map(repr, missing))}.")
        settings = []
        for name in scalars:
            value = row.get(name, defaults.get(name))
            if value is None:
                raise RequestError(f"instances[{index}] lacks input {name!r} (no default in the export).")
            settings.append(_to_array(value, specs[name], f"instances[{index}].{name}").item())
        groups.setdefault(tuple(settings), []).append(index)
    predictions = [None] * len(rows)
    for settings, indices in groups.items():
        tensors = {
            name: _to_array([rows[i][name] for i in indices], specs[name], f"instances[*].{name}") for name in batched
        }
        for name, value in zip(scalars, settings):
            tensors[name] = np.asarray(value, specs[name].dtype.as_numpy_dtype)
        outputs = _call(function, tensors)
        for position, index in enumerate(indices):
            row = {}
            for name, value in outputs.items():
                row[name] = value[position] if isinstance(value, list) else value
            predictions[index] = next(iter(row.values())) if len(row) == 1 else row
    return predictions


def _predict_columns(function, specs, batched, scalars, defaults, inputs, max_batch):
    if not isinstance(inputs, dict) or (len(batched) == 1 and set(inputs) == {"b64"}):
        if len(batched) != 1:
            raise RequestError(f"\"inputs\" must be an object naming the inputs {', '.join(sorted(specs))}.")
        inputs = {batched[0]: inputs}
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise RequestError(f"Unknown input(s) {', '.join(map(repr, unknown))}; inputs: {', '.join(sorted(specs))}.")
    tensors = {}
    for name, spec in specs.items():
        value = inputs.get(name, defaults.get(name) if name in scalars else None)
        if value is None:
            raise RequestError(f"Missing input {name!r}.")
        tensors[name] = _to_array(value, spec, f"inputs.{name}")
    for name in batched:
        if tensors[name].shape[0] > max_batch:
            raise RequestError(
                f"Too many instances: {tensors[name].shape[0]} (this server takes at most {max_batch} per request)."
            )
    outputs = _call(function, tensors)
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _call(function, arrays):
    import tensorflow as tf

    specs = function.structured_input_signature[1]
    tensors = {name: tf.constant(array, dtype=specs[name].dtype) for name, array in arrays.items()}
    try:
        outputs = function(**tensors)
    except tf.errors.InvalidArgumentError as error:
        raise RequestError(_invalid_argument_text(error.message)) from error
    return {name: _to_json(tensor) for name, tensor in sorted(outputs.items())}


def _invalid_argument_text(message):
    """The readable part of a graph's InvalidArgument error: an assertion's message and the bad value."""
    for line in message.splitlines():
        if "assertion failed:" in line:
            parts = re.findall(r"\[([^\[\]]*)\]", line.split("assertion failed:", 1)[1])
            if not parts:
                break
            text = parts[0].replace("\\'", "'")
            for index, part in enumerate(parts[:-1]):
                if part.startswith("x (") and part.endswith("= "):
                    text += f" (got {parts[index + 1]})"
                    break
            return text
    lines = [line.strip() for line in message.splitlines() if line.strip() and line.strip() != "Graph execution error:"]
    return lines[0] if lines else message


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


def make_app(export_root, max_batch=DEFAULT_MAX_BATCH, max_body_bytes=DEFAULT_MAX_BODY_BYTES, preload=True):
    """The WSGI application serving the exports under `export_root` (for any WSGI server)."""
    from werkzeug.exceptions import RequestEntityTooLarge
    from werkzeug.wrappers import Request, Response

    class LimitedRequest(Request):
        max_content_length = max_body_bytes + 1

    repository = ModelRepository(export_root)
    if preload:  # load each model's latest version now: errors show at start, first requests are fast
        for name in repository.model_names():
            try:
                repository.get(name)
            except RequestError as error:
                logger.error("%s", error)

    def respond(payload, status=200, close=False):
        response = Response(json.dumps(payload, ensure_ascii=False) + "\n", status=status, mimetype="application/json")
        if close:
            response.headers["Connection"] = "close"
        return response

    def handle(request):
        match = _PATH.match(request.path)
        if not match:
            raise RequestError(
                f"No such endpoint: {request.method} {request.path}. "
                "Try GET /v1/models/<name> or POST /v1/models/<name>:predict.", 404,
            )
        name, version_text, metadata, verb = match.group("name", "version", "metadata", "verb")
        version = None
        if version_text is not None:
            if not version_text.isdigit():
                raise RequestError(f"Version must be a non-negative integer, got {version_text!r}.", 400)
            version = int(version_text)
        if verb is None:
            if request.method != "GET":
                raise RequestError(f"{request.method} is not allowed here; use GET.", 405)
            if metadata:
                return respond(_metadata(repository.get(name, version)))
            return respond(_status(repository, name, version))
        if verb != "predict":
            raise RequestError(
                f"Unsupported verb :{verb}; this server implements :predict (classify and regress take tf.Examples).", 400
            )
        if request.method != "POST":
            raise RequestError(f"{request.method} is not allowed for :predict; use POST.", 405)
        too_large = RequestError(f"Request body exceeds the limit of {max_body_bytes} bytes.", 413)
        try:
            data = request.get_data(cache=False)  # the whole body, or its first max_body_bytes + 1 bytes
        except RequestEntityTooLarge as error:  # from the Content-Length header, before reading
            raise too_large from error
        if len(data) > max_body_bytes:  # a chunked body stops being read just past the limit
            raise too_large
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"Malformed JSON in the request body: {error}.") from error
        servable = repository.get(name, version)
        return respond(predict(servable, body, max_batch=max_batch))

    def app(environ, start_response):
        request = LimitedRequest(environ)
        try:
            response = handle(request)
        except RequestError as error:
            response = respond({"error": str(error)}, error.status, close=error.status == 413)
        except Exception as error:  # a bug or a TensorFlow failure: answer, log, keep serving
            logger.exception("Error serving %s %s", request.method, request.path)
            response = respond({"error": f"Internal error: {type(error).__name__}: {error}"}, 500)
        return response(environ, start_response)

    app.repository = repository
    return app


def make_server(
    export_root,
    host="127.0.0.1",
    port=DEFAULT_PORT,
    max_batch=DEFAULT_MAX_BATCH,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    request_timeout=DEFAULT_REQUEST_TIMEOUT,
    preload=True,
):
    """A threaded werkzeug server (not yet serving) for the exports under `export_root`.

    Call `serve_forever()` on it (and `shutdown()` from another thread to stop). Port 0 picks a
    free port: read it from `server.port`. Loopback only unless `host` says otherwise.
    """
    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as werkzeug_make_server

    class Handler(WSGIRequestHandler):
        timeout = request_timeout  # a client that stops sending mid-request is dropped, not waited on forever

        def log_request(self, code="-", size="-"):
            logger.info("%s %s %s", self.command, self.path, code)

    app = make_app(export_root, max_batch=max_batch, max_body_bytes=max_body_bytes, preload=preload)
    server = werkzeug_make_server(host, port, app, threaded=True, request_handler=Handler)
    server.app = app
    return server


def serve(export_root, host="127.0.0.1", port=DEFAULT_PORT, **options):
    """Serves the exports under `export_root` until interrupted (Ctrl-C)."""
    if not logging.getLogger().handlers:  # a command-line run: show the access log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = make_server(export_root, host=host, port=port, **options)
    models = server.app.repository.model_names()
    address = f"http://{host}:{server.port}/v1/models/<name>"
    print(f"Serving {', '.join(models) or 'no models yet'} from {export_root} at {address}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
