"""The TF-Serving-compatible HTTP server: real requests on 127.0.0.1 against the shared exports."""

import concurrent.futures
import http.client
import inspect
import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.zoo.test_export import AWKWARD, AWKWARD_MASKED, LABELS, NEW_TOKENS, PROMPTS, TOP_K, batch_of, shared_exports
from serving import server as serving

MAX_BATCH = 300
MAX_BODY = 200_000


def start(root, **options):
    server = serving.make_server(root, port=0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def exports():
    return shared_exports()[1]


@pytest.fixture(scope="module")
def server(exports):
    root = shared_exports()[0]
    server, thread = start(root, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, request_timeout=2)
    yield server
    stop(server, thread)


@pytest.fixture(scope="module")
def signatures(exports):
    """The exports' signatures, called directly: what every answer must equal."""
    loaded = {name: tf.saved_model.load(path) for name, (_, _, path) in exports.items()}
    return {name: model.signatures for name, model in loaded.items()}, loaded


def request(server, method, path, body=None, headers=None):
    """(status, parsed JSON) of one HTTP request; `body` is JSON-encoded unless it is bytes or a generator of them."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        data = body if body is None or isinstance(body, bytes) or inspect.isgenerator(body) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return response.status, json.loads(payload)
    finally:
        connection.close()


def classify_directly(signatures, texts):
    outputs = signatures[0]["classifier"]["classify"](text=tf.constant(texts, tf.string))
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def generate_directly(signatures, prompts, max_new_tokens=NEW_TOKENS, temperature=0.0, top_k=0, top_p=1.0, seed=0):
    outputs = signatures[0]["gpt-clm"]["generate"](
        prompt=tf.constant(prompts, tf.string), max_new_tokens=tf.constant(max_new_tokens), temperature=tf.constant(temperature),
        top_k=tf.constant(top_k), top_p=tf.constant(top_p), seed=tf.constant(seed),
    )
    return [text.decode("utf-8") for text in outputs["text"].numpy()]


def assert_classified(predictions, expected):
    assert [p["label"] for p in predictions] == [b.decode() for b in expected["label"]]
    assert [p["label_id"] for p in predictions] == expected["label_id"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose([p["logits"] for p in predictions], expected["logits"], atol=1e-6)


# -- status and metadata ------------------------------------------------------------------------


def test_model_status_and_metadata(server):
    status, body = request(server, "GET", "/v1/models/classifier")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = request(server, "GET", "/v1/models/gpt-clm/versions/1")
    assert status == 200 and body["model_version_status"][0]["version"] == "1"

    status, body = request(server, "GET", "/v1/models/classifier/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "classifier", "signature_name": "", "version": "1"}
    signature_def = body["metadata"]["signature_def"]["signature_def"]
    assert set(signature_def) == {"classify", "classify_ids", "embed", "serving_default", "tokenize"}
    assert signature_def["classify"]["inputs"]["text"]["dtype"] == "DT_STRING"
    assert signature_def["classify"]["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert body["metadata"]["zoo"]["label_names"] == LABELS


# -- predict ------------------------------------------------------------------------------------


def test_predict_row_and_columnar_formats(server, signatures):
    texts = ["the cat sat on the mat", "a hammer and a saw"]
    expected = classify_directly(signatures, texts)
    status, body = request(server, "POST", "/v1/models/classifier:predict", {"instances": texts})
    assert status == 200 and set(body) == {"predictions"}
    assert_classified(body["predictions"], expected)

    # Objects naming the input, a chosen signature and a version in the path: the same answers.
    status, body = request(
        server, "POST", "/v1/models/classifier/versions/1:predict",
        {"signature_name": "classify", "instances": [{"text": t} for t in texts]},
    )
    assert status == 200
    assert_classified(body["predictions"], expected)

    # Columnar: {"inputs": ...} answered by {"outputs": {name: batch}}.
    for inputs in (texts, {"text": texts}):
        status, body = request(server, "POST", "/v1/models/classifier:predict", {"inputs": inputs})
        assert status == 200 and set(body) == {"outputs"}
        assert body["outputs"]["label"] == [b.decode() for b in expected["label"]]
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected["probabilities"], atol=1e-6)

    # Base64 strings, TF Serving's form for binary values.
    status, body = request(server, "POST", "/v1/models/classifier:predict", {"instances": [{"b64": "dGhlIGNhdA=="}]})
    assert status == 200
    assert_classified(body["predictions"], classify_directly(signatures, ["the cat"]))


def test_predict_every_recipe_and_signature(server, signatures, exports):
    # fill_mask: one prediction object per text.
    status, body = request(server, "POST", "/v1/models/bert-mlm:predict", {"instances": ["the [MASK] sat", "[MASK] [MASK]"]})
    assert status == 200
    expected = signatures[0]["bert-mlm"]["fill_mask"](text=tf.constant(["the [MASK] sat", "[MASK] [MASK]"]))
    assert [p["num_masks"] for p in body["predictions"]] == [1, 2]
    assert body["predictions"][0]["tokens"] == [[t.decode() for t in expected["tokens"][0, 0].numpy()]] + [[""] * TOP_K]
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]], expected["scores"], atol=1e-6)

    # generate in row format: bare prompts take the export's defaults; instances may carry their
    # own settings, and all run as one batch with a setting per row (a sampled row draws the
    # noise of its place in that batch).
    instances = [
        {"prompt": "def ", "max_new_tokens": 3},
        "the cat",
        {"prompt": "import", "max_new_tokens": 3},
        {"prompt": "the dog", "max_new_tokens": 5, "temperature": 1.0, "seed": 7},
    ]
    status, body = request(server, "POST", "/v1/models/gpt-clm:predict", {"instances": instances})
    assert status == 200
    assert body["predictions"][0:3:2] == generate_directly(signatures, ["def ", "import"], max_new_tokens=3)
    assert body["predictions"][1] == generate_directly(signatures, ["the cat"], max_new_tokens=31)[0]
    assert body["predictions"] == generate_directly(
        signatures, ["def ", "the cat", "import", "the dog"], max_new_tokens=[3, 31, 3, 5], temperature=[0.0, 0.0, 0.0, 1.0],
        top_k=[0] * 4, top_p=[1.0] * 4, seed=[0, 0, 0, 7],
    )

    # Token-id signatures, columnar and row.
    status, body = request(
        server, "POST", "/v1/models/gpt-clm:predict",
        {"signature_name": "generate_ids", "inputs": {"token_ids": [[3, 20, 21], [3, 0, 0]], "lengths": [3, 1], "max_new_tokens": 4}},
    )
    assert status == 200 and set(body["outputs"]) == {"token_ids", "lengths"}
    assert np.array(body["outputs"]["token_ids"]).shape == (2, 4)
    status, body = request(
        server, "POST", "/v1/models/classifier:predict",
        {"signature_name": "classify_ids", "instances": [{"token_ids": [2, 10, 3], "padding_mask": [1, 1, 1]}]},
    )
    assert status == 200 and body["predictions"][0]["label"] in LABELS


def test_awkward_inputs_through_the_server(server, signatures, exports):
    status, body = request(server, "POST", "/v1/models/classifier:predict", {"instances": AWKWARD})
    assert status == 200
    assert_classified(body["predictions"], classify_directly(signatures, AWKWARD))
    assert "😀" in json.dumps(AWKWARD, ensure_ascii=False)

    many = batch_of(256)
    status, body = request(server, "POST", "/v1/models/classifier:predict", {"inputs": {"text": many}})
    assert status == 200 and len(body["outputs"]["label"]) == 256
    np.testing.assert_allclose(body["outputs"]["logits"], classify_directly(signatures, many)["logits"], atol=1e-6)

    status, body = request(server, "POST", "/v1/models/bert-mlm:predict", {"instances": AWKWARD_MASKED})
    assert status == 200 and [p["num_masks"] for p in body["predictions"]] == [0, 1, 2, 2, 1, 1, 0]
    status, body = request(server, "POST", "/v1/models/bert-mlm:predict", {"instances": [t + " [MASK]" for t in many]})
    assert status == 200 and len(body["predictions"]) == 256

    # Greedy continuations over HTTP equal the in-process Keras generation.
    recipe, model, _ = exports["gpt-clm"]
    status, body = request(
        server, "POST", "/v1/models/gpt-clm:predict", {"inputs": {"prompt": PROMPTS, "max_new_tokens": NEW_TOKENS, "temperature": 0.0}}
    )
    assert status == 200
    assert body["outputs"] == recipe.generate_text(model, PROMPTS, temperature=0.0, max_new_tokens=NEW_TOKENS)
    status, body = request(server, "POST", "/v1/models/gpt-clm:predict", {"instances": many, "signature_name": "generate"})
    assert status == 200 and len(body["predictions"]) == 256 and all(isinstance(p, str) for p in body["predictions"])


BAD_REQUESTS = [
    ("malformed JSON", "POST", "/v1/models/classifier:predict", b'{"instances": ["a"', 400, "Malformed JSON"),
    ("not UTF-8", "POST", "/v1/models/classifier:predict", b'{"instances": ["\xff"]}', 400, "Malformed JSON"),
    ("not an object", "POST", "/v1/models/classifier:predict", [1, 2], 400, "must be a JSON object"),
    ("no instances", "POST", "/v1/models/classifier:predict", {"signature_name": "classify"}, 400, "exactly one of"),
    ("both formats", "POST", "/v1/models/classifier:predict", {"instances": ["a"], "inputs": ["a"]}, 400, "exactly one of"),
    ("empty instances", "POST", "/v1/models/classifier:predict", {"instances": []}, 400, "non-empty list"),
    ("unknown field", "POST", "/v1/models/classifier:predict", {"instances": ["a"], "timeout": 3}, 400, "Unknown request field"),
    ("numbers for text", "POST", "/v1/models/classifier:predict", {"instances": [1, 2]}, 400, "text expects strings, got int"),
    ("string for an int", "POST", "/v1/models/gpt-clm:predict", {"instances": [{"prompt": "a", "max_new_tokens": "ten"}]}, 400, "max_new_tokens expects integers"),
    ("fraction for an int", "POST", "/v1/models/gpt-clm:predict", {"inputs": {"prompt": ["a"], "top_k": 2.5}}, 400, "top_k expects integers"),
    ("int32 overflow", "POST", "/v1/models/gpt-clm:predict", {"inputs": {"prompt": ["a"], "seed": 2**40}}, 400, "out of range for int32"),
    ("wrong rank", "POST", "/v1/models/classifier:predict", {"inputs": {"text": "one string"}}, 400, "rank 1"),
    ("ragged ids", "POST", "/v1/models/classifier:predict",
     {"signature_name": "classify_ids", "inputs": {"token_ids": [[2, 3], [2]], "padding_mask": [[1, 1], [1]]}}, 400, "rectangular"),
    ("unknown input", "POST", "/v1/models/classifier:predict", {"instances": [{"txt": "a"}]}, 400, "unknown input(s) 'txt'"),
    ("missing input", "POST", "/v1/models/gpt-clm:predict", {"signature_name": "generate_ids", "inputs": {"token_ids": [[3]]}}, 400, "Missing input 'lengths'"),
    ("unknown signature", "POST", "/v1/models/classifier:predict", {"signature_name": "nope", "instances": ["a"]}, 400,
     "'nope' not found in model 'classifier' (signatures: classify, classify_ids, embed, serving_default, tokenize)"),
    ("too many instances", "POST", "/v1/models/classifier:predict", {"instances": ["a"] * (MAX_BATCH + 1)}, 400, "Too many instances: 301"),
    ("too many columns", "POST", "/v1/models/classifier:predict", {"inputs": ["a"] * (MAX_BATCH + 1)}, 400, "Too many instances: 301"),
    ("too long a continuation", "POST", "/v1/models/gpt-clm:predict", {"inputs": {"prompt": ["a"], "max_new_tokens": 32}}, 400,
     "max_new_tokens must be between 1 and 31 (the sequence_length 32 less one prompt token) (got 32)"),
    ("oversized body", "POST", "/v1/models/classifier:predict", {"instances": ["x" * (MAX_BODY + 1)]}, 413, "exceeds the limit of 200000 bytes"),
    ("unknown model", "POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404, "Model 'nope' not found"),
    ("unknown version", "POST", "/v1/models/classifier/versions/9:predict", {"instances": ["a"]}, 404, "Version 9 of model 'classifier' not found"),
    ("bad version", "GET", "/v1/models/classifier/versions/latest", None, 400, "non-negative integer"),
    ("unknown status", "GET", "/v1/models/nope", None, 404, "Model 'nope' not found"),
    ("path escape", "GET", "/v1/models/..", None, 404, "not found"),
    ("GET predict", "GET", "/v1/models/classifier:predict", None, 405, "use POST"),
    ("POST status", "POST", "/v1/models/classifier", {"instances": ["a"]}, 405, "use GET"),
    ("unknown verb", "POST", "/v1/models/classifier:classify", {"examples": []}, 400, "Unsupported verb :classify"),
    ("unknown path", "GET", "/v2/anything", None, 404, "No such endpoint"),
]


@pytest.mark.parametrize("method,path,body,status,message", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_error(server, method, path, body, status, message):
    got_status, got_body = request(server, method, path, body)
    assert (got_status, set(got_body)) == (status, {"error"}), got_body
    assert message in got_body["error"]


def test_chunked_bodies_are_read_and_limited(server, signatures):
    def chunks(parts):
        yield from parts  # no Content-Length: http.client sends Transfer-Encoding: chunked

    status, body = request(server, "POST", "/v1/models/classifier:predict", chunks([b'{"instances": ', b'["the cat"]}']))
    assert status == 200
    assert_classified(body["predictions"], classify_directly(signatures, ["the cat"]))
    oversized = chunks([b'{"instances": ["'] + [b"x" * 50_000] * 5 + [b'"]}'])
    status, body = request(server, "POST", "/v1/models/classifier:predict", oversized)
    assert status == 413 and "exceeds the limit of 200000 bytes" in body["error"]


def test_sixteen_concurrent_requests(server, signatures):
    jobs = []
    for index in range(16):
        if index % 3 == 0:
            texts = [f"the cat number {index}", f"a saw {index}"]
            jobs.append(("classifier", {"instances": texts}, classify_directly(signatures, texts)["label"].tolist()))
        elif index % 3 == 1:
            prompts = [f"def f{index}(", "the dog"]
            jobs.append(("gpt-clm", {"inputs": {"prompt": prompts, "max_new_tokens": 6}}, generate_directly(signatures, prompts, 6)))
        else:
            texts = [f"the [MASK] number {index}"]
            outputs = signatures[0]["bert-mlm"]["fill_mask"](text=tf.constant(texts))
            jobs.append(("bert-mlm", {"instances": texts}, [[t.decode() for t in outputs["tokens"][0, 0].numpy()]]))

    def run(job):
        model, body, _ = job
        return request(server, "POST", f"/v1/models/{model}:predict", body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(run, jobs))
    for (model, _, expected), (status, body) in zip(jobs, answers):
        assert status == 200, body
        if model == "classifier":
            assert [p["label"] for p in body["predictions"]] == [e.decode() for e in expected]
        elif model == "gpt-clm":
            assert body["outputs"] == expected
        else:
            assert [p["tokens"][0] for p in body["predictions"]] == expected


def test_a_stalled_client_is_dropped_without_blocking_others(server):
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        stalled.sendall(
            b"POST /v1/models/classifier:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"instances\": ["
        )
        status, _ = request(server, "POST", "/v1/models/classifier:predict", {"instances": ["a"]})
        assert status == 200
        started = time.monotonic()
        remainder = stalled.recv(65536)  # the server gives up on the request after its 2 s timeout
        assert time.monotonic() - started < 20
        assert remainder == b"" or remainder.startswith(b"HTTP/1.")
    finally:
        stalled.close()


def test_versions_are_resolved_and_a_broken_export_is_reported(exports, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(exports["classifier"][2], root / "labels" / "1")
    server, thread = start(str(root), preload=False)
    try:
        assert request(server, "GET", "/v1/models/labels")[1]["model_version_status"][0]["version"] == "1"
        # A version exported while serving is picked up by the next request.
        shutil.copytree(exports["classifier"][2], root / "labels" / "2")
        status, body = request(server, "GET", "/v1/models/labels")
        assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]
        # A broken newest version: its status says so, it answers 503, older versions still serve.
        (root / "labels" / "3").mkdir()
        (root / "labels" / "3" / "saved_model.pb").write_bytes(b"not a protobuf")
        status, body = request(server, "GET", "/v1/models/labels/versions/3")
        assert status == 200 and body["model_version_status"][0]["state"] == "END"
        assert body["model_version_status"][0]["status"]["error_code"] == "UNKNOWN"
        status, body = request(server, "POST", "/v1/models/labels:predict", {"instances": ["a"]})
        assert status == 503 and "failed to load" in body["error"]
        status, body = request(server, "POST", "/v1/models/labels/versions/2:predict", {"instances": ["a"]})
        assert status == 200 and body["predictions"][0]["label"] in LABELS
        # Hidden or non-integer directories (an export in progress) are not versions.
        (root / "labels" / ".3.tmp-abc").mkdir()
        assert serving.ModelRepository(str(root)).versions("labels") == [1, 2, 3]
    finally:
        stop(server, thread)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        serving.make_server(str(tmp_path / "missing"), port=0)
    assert os.path.isdir(root)


def test_a_loaded_version_replays_its_warmup_requests(exports, caplog, tmp_path):
    """As TF Serving does: every signature (but the serving_default alias) has run once before the first request."""
    for name, (_, _, path) in exports.items():
        servable = serving.Servable(name, 1, path)
        assert servable.warmed_up == len(servable.signatures) - 1 > 0
    # A damaged warm-up file costs only the warm-up: the model still loads and serves.
    _, _, path = exports["classifier"]
    copy = str(tmp_path / "damaged-warmup" / "1")
    shutil.copytree(path, copy)
    with open(os.path.join(copy, "assets.extra", "tf_serving_warmup_requests"), "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 8)
    with caplog.at_level("WARNING"):
        servable = serving.Servable("damaged-warmup", 1, copy)
    assert servable.warmed_up == 0 and "warm-up" in caplog.text
    outputs = servable.signatures["classify"](text=tf.constant(["the cat"]))
    assert outputs["label"].shape == (1,)
