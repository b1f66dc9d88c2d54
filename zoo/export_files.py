"""Reading zoo exports back: their metadata and the SavedModel, with errors that name the bad file.

Used by the `zoo` inference commands and the HTTP server (`serving`); needs TensorFlow and
tensorflow_text only to load the SavedModel itself.
"""

import json
import os
import re

METADATA_FILE = "zoo_metadata.json"


def _clip(text, limit=80):
    """`text` shortened for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text):
    return " ".join(str(text).split())


class ExportLoadError(ValueError):
    """An export that cannot be loaded: names the file, what is wrong with it and what to do."""

    def __init__(self, directory, file, problem, advice="re-export the model (zoo export) or copy the version directory again",
                 detail=None):
        self.directory = directory
        self.file = file  # relative to the version directory
        self.problem = _one_line(problem)
        detail = f" ({_clip(_one_line(detail), 200)})" if detail else ""
        super().__init__(f"{os.path.join(directory, file)}: {self.problem}{detail}; {advice}.")

    def public_text(self):
        """The problem without the server's paths (TensorFlow's detail may hold some): for clients."""
        return f"{self.file} {self.problem}"


def read_export_metadata(directory):
    """The export's `assets/zoo_metadata.json` as a dict ({} when it has none); ExportLoadError
    when the file is not a JSON object."""
    path = os.path.join(directory, "assets", METADATA_FILE)
    if not os.path.exists(path):
        return {}
    relative = os.path.join("assets", METADATA_FILE)
    try:
        with open(path, "rb") as f:
            metadata = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ExportLoadError(
            directory, relative, "is not valid JSON", "re-export the model or restore the file", detail=str(error)
        ) from error
    except OSError as error:
        raise ExportLoadError(directory, relative, "cannot be read", "check its permissions", detail=error.strerror) from error
    if not isinstance(metadata, dict):
        raise ExportLoadError(
            directory, relative, f"holds a JSON {type(metadata).__name__}, not an object", "re-export the model or restore the file"
        )
    return metadata


def load_export_directory(directory):
    """(the loaded SavedModel, its zoo metadata) of a version directory.

    Raises ExportLoadError, one line naming the bad file, for a malformed `zoo_metadata.json`
    and a truncated, corrupt or missing `saved_model.pb` or variables file.
    """
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - registers the ops the tokenizer needs

    metadata = read_export_metadata(directory)
    try:
        loaded = tf.saved_model.load(directory)
    except Exception as error:  # TensorFlow raises OSError, ValueError, IndexError or OpError here
        raise _diagnose_load_failure(directory, error) from error
    return loaded, metadata


WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def replay_warmup_requests(loaded, directory):
    """Runs the export's TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`)
    through the loaded SavedModel, as TF Serving does when it loads a version, so that the first
    client request does not pay for tracing and allocation. Returns the number replayed; a
    request that fails is skipped (a warm-up never stops a model from serving)."""
    import logging

    import tensorflow as tf

    path = os.path.join(directory, WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    from tensorflow_serving.apis import prediction_log_pb2

    replayed = 0
    try:
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    except tf.errors.OpError as error:
        logging.getLogger(__name__).warning("%s: unreadable warm-up requests (%s); skipped", path, _one_line(error.message))
        return 0
    for record in records:
        try:
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            function = loaded.signatures[request.model_spec.signature_name]
            function(**{key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()})
            replayed += 1
        except Exception as error:  # noqa: BLE001 - any failure only costs the warm-up
            logging.getLogger(__name__).warning("%s: a warm-up request failed (%s); skipped", path, _clip(_one_line(error), 200))
    return replayed


def _diagnose_load_failure(directory, error):
    """The ExportLoadError for a failed `tf.saved_model.load`: which file is at fault."""
    from tensorflow.core.protobuf import saved_model_pb2

    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
            graph = saved_model_pb2.SavedModel.FromString(f.read())
        graph_ok = len(graph.meta_graphs) > 0
    except Exception:  # a protobuf DecodeError, or an unreadable file
        graph_ok = False
    if not graph_ok:
        return ExportLoadError(directory, "saved_model.pb", "is truncated or corrupt")
    if "Op type not registered" in detail:
        return ExportLoadError(directory, "saved_model.pb", "needs ops this TensorFlow lacks",
                               "install the TensorFlow and tensorflow_text versions of the export's metadata", detail=detail)
    return ExportLoadError(directory, "variables/", "is truncated, corrupt or missing", detail=detail)


def graph_error_text(message):
    """The readable part of a graph's InvalidArgument error, on one line: an assertion's message
    and the bad values, else the kernel's own message without the graph trace."""
    for line in message.splitlines():
        if "assertion failed:" in line:
            text = line.split("assertion failed:", 1)[1].strip()
            if not (text.startswith("[") and text.endswith("]")):
                break
            parts = [part.replace("\\'", "'") for part in text[1:-1].split("] [")]
            if len(parts) >= 3 and parts[1] in ("got", "got shape"):  # zoo.export's checks
                return f"{parts[0]} ({parts[1]} {_clip(parts[2], 60)})."
            for index, part in enumerate(parts[:-1]):  # tf.debugging.assert_* (older exports)
                if part.startswith("x (") and part.endswith("= "):
                    return f"{parts[0]} (got {_clip(parts[index + 1], 60)})."
            return parts[0] + "."
    for line in message.splitlines():
        stripped = line.strip()
        if (not stripped or line[:1].isspace() or stripped.startswith(
                ("Graph execution error", "Detected at node", "<stack traces", "File ", "[["))):
            continue
        return "Invalid input: " + _clip(re.sub(r"\s*\[\[\{\{node.*$", "", stripped), 200)
    return "Invalid input."
