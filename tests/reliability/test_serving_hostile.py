"""Hostile and broken requests against a real `zoo serve` process (issue #17, serving half).

Two servers, each a `.venv/bin/zoo serve ROOT --port 0` subprocess on 127.0.0.1: the main one
serves the tiny shared exports (tests/zoo/test_export.py: shared_exports()) with short read
timeouts; a small one serves a copy of the gpt-clm export with one prediction slot and no
queue, for the busy and reload cases. Every request is bounded by a client timeout, every
trickle by a count. What each test proves is in its name; the fault table in README's
Reliability section points here.
"""

import concurrent.futures
import os
import select
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.reliability.serving_helpers import ZOO, ZooServer, assert_one_line_error
from tests.zoo.test_export import SHAPE, shared_exports
from trainers import cli

IDLE = 3  # --request-timeout: seconds of silence allowed while a request is read
DEADLINE = 6  # --read-deadline: seconds for a whole request
VOCABULARY = SHAPE["vocabulary_size"]
CONTEXT = SHAPE["sequence_length"]
GREEDY = {"max_new_tokens": 6, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def exports():
    return shared_exports()


@pytest.fixture(scope="module")
def servers(exports, tmp_path_factory):
    """The main server, over the shared exports with short read timeouts and a queue for 128;
    and a small one with one prediction slot and no queue, over a root of its own (tests add
    versions to it). Both start at once: their start-ups overlap."""
    logs = tmp_path_factory.mktemp("serve")
    root = tmp_path_factory.mktemp("small-root")
    shutil.copytree(exports[1]["gpt-clm"][2], root / "gpt" / "1")
    started = [
        ZooServer(exports[0], logs / "serve.log", "--request-timeout", IDLE, "--read-deadline", DEADLINE,
                  "--max-concurrent", 4, "--max-queue", 128, "--queue-timeout", 120),
        ZooServer(root, logs / "small-serve.log", "--max-concurrent", 1, "--max-queue", 0),
    ]
    try:
        for server in started:
            server.wait()
        # The first call of a signature optimises its graph (seconds): done here, not inside a timed test.
        assert started[0].predict("gpt-clm", generate(["def "], max_new_tokens=1))[0] == 200
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def small_server(servers):
    return servers[1]


@pytest.fixture(scope="module")
def direct(exports):
    """The exports' signatures called in this process: what every good answer must equal."""
    return {name: tf.saved_model.load(exports[1][name][2]).signatures for name in ("classifier", "gpt-clm")}


def generate_directly(direct, prompts, **settings):
    settings = {**GREEDY, **settings}
    outputs = direct["gpt-clm"]["generate"](
        prompt=tf.constant(prompts, tf.string),
        **{name: tf.constant(value, tf.float32 if name in ("temperature", "top_p") else tf.int32) for name, value in settings.items()},
    )
    return [text.decode("utf-8") for text in outputs["text"].numpy()]


def generate(prompts, **settings):
    return {"signature_name": "generate", "inputs": {"prompt": prompts, **settings}}


def within(seconds, function):
    """`function()`'s result, or a failure if it has not returned after `seconds` (it keeps running)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return result.get("value")


def raw_post(path, body, headers=()):
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    return (head + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode() + body


# -- generation parameters -----------------------------------------------------------------------


def test_an_empty_batch_is_refused_at_once(server, direct):
    started = time.monotonic()
    status, body, _ = server.predict("gpt-clm", generate([], max_new_tokens=4), timeout=20)
    assert_one_line_error(status, body, 400, "empty")
    status, body, _ = server.predict(
        "gpt-clm", {"signature_name": "generate_ids", "inputs": {"token_ids": np.zeros((0, 3), int).tolist(), "lengths": []}}, timeout=20
    )
    assert 400 <= status < 500
    assert time.monotonic() - started < 10
    # The signature itself refuses an empty batch (it used to spin forever): any client gets the rule.
    settings = {name: tf.constant(value) for name, value in GREEDY.items()}
    for call in (
        lambda: direct["gpt-clm"]["generate"](prompt=tf.constant([], tf.string), **settings),
        lambda: direct["gpt-clm"]["generate_ids"](token_ids=tf.zeros([0, 3], tf.int32), lengths=tf.zeros([0], tf.int32), **settings),
    ):
        def expect_error(call=call):
            with pytest.raises(tf.errors.InvalidArgumentError, match="the batch is empty"):
                call()
            return True

        assert within(30, expect_error)


@pytest.mark.parametrize("value", [2e9, 2_000_000_000, -5, 0, CONTEXT])
def test_max_new_tokens_out_of_range_is_refused_before_any_work(server, value):
    rss = server.rss_mb()
    started = time.monotonic()
    status, body, _ = server.predict("gpt-clm", generate(["def "], max_new_tokens=value), timeout=30)
    assert_one_line_error(status, body, 400, f"max_new_tokens must be between 1 and {CONTEXT - 1}", str(int(value)))
    status, body, _ = server.predict("gpt-clm", {"instances": [{"prompt": "def ", "max_new_tokens": value}]}, timeout=30)
    assert_one_line_error(status, body, 400, "max_new_tokens must be between")
    assert time.monotonic() - started < 10, "the range was built before the check"
    assert server.rss_mb() - rss < 100


SAMPLING = [
    ("temperature", float("nan"), "temperature must be a finite number >= 0"),
    ("temperature", float("inf"), "temperature must be a finite number >= 0"),
    ("temperature", -0.5, "temperature must be a finite number >= 0"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("top_p", -1.0, "top_p must be in (0, 1]"),
    ("top_p", float("nan"), "top_p must be in (0, 1]"),
    ("top_p", 1.5, "top_p must be in (0, 1]"),
    ("top_k", -1, "top_k must be >= 0"),
]


@pytest.mark.parametrize("name,value,message", SAMPLING, ids=[f"{n}={v}" for n, v, _ in SAMPLING])
def test_sampling_settings_are_checked(server, name, value, message):
    # JSON's NaN and Infinity literals are what Python's json module writes for them.
    status, body, _ = server.predict("gpt-clm", generate(["def ", "the cat"], **{"temperature": 1.0, name: value}))
    assert_one_line_error(status, body, 400, message)
    instances = [{"prompt": "def "}, {"prompt": "the cat", "temperature": 1.0, name: value}]
    status, body, _ = server.predict("gpt-clm", {"instances": instances})
    assert_one_line_error(status, body, 400, message)


def test_zoo_generate_rejects_bad_settings_in_one_line(exports, capsys):
    gpt = exports[1]["gpt-clm"][2]
    for option, value, message in [
        ("--temperature", "nan", "temperature must be a finite number >= 0"),
        ("--max-new-tokens", "2000000000", f"max_new_tokens must be between 1 and {CONTEXT - 1}"),
    ]:
        assert cli.main(["generate", gpt, "def ", option, value]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("zoo generate: error: ") and message in error and "\n" not in error, error


def test_ids_signatures_check_the_vocabulary_and_the_mask(server):
    cases = [
        ("gpt-clm", {"signature_name": "generate_ids", "inputs": {"token_ids": [[3, VOCABULARY + 300]], "lengths": [2]}},
         f"token_ids must lie in [0, {VOCABULARY})", str(VOCABULARY + 300)),
        ("gpt-clm", {"signature_name": "generate_ids", "inputs": {"token_ids": [[3, -4]], "lengths": [2]}}, "token_ids must lie", "-4"),
        ("gpt-clm", {"signature_name": "generate_ids", "inputs": {"token_ids": [[3, 4]], "lengths": [0]}},
         "every length must be between 1 and the width of token_ids", "0"),
        ("classifier", {"signature_name": "classify_ids", "inputs": {"token_ids": [[2, 5, 3]], "padding_mask": [[1, 7, 1]]}},
         "padding_mask must hold only 0 and 1", "7"),
        ("classifier", {"signature_name": "classify_ids", "instances": [{"token_ids": [2, -1, 3], "padding_mask": [1, 1, 1]}]},
         "token_ids must lie", "-1"),
        ("bert-mlm", {"signature_name": "fill_mask_ids", "inputs": {"token_ids": [[2, 99999, 3]], "padding_mask": [[1, 1, 1]]}},
         "token_ids must lie", "99999"),
    ]
    for model, body, *fragments in cases:
        status, answer, _ = server.predict(model, body)
        assert_one_line_error(status, answer, 400, *fragments)


# -- broken HTTP -----------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
BROKEN_HTTP = [
    ("body shorter than its Content-Length",
     raw_post("/v1/models/classifier:predict", b'{"instances": ["a', ["Content-Length: 100"]), True, 400, "ended after 17 of the 100 bytes"),
    ("malformed chunk size",
     raw_post("/v1/models/classifier:predict", b"zz\r\n{}\r\n0\r\n\r\n", ["Transfer-Encoding: chunked"]), False, 400, "Malformed chunked"),
    ("chunk without its terminator",
     raw_post("/v1/models/classifier:predict", b"2\r\n{}XX0\r\n\r\n", ["Transfer-Encoding: chunked"]), False, 400, "Malformed chunked"),
    ("invalid Content-Length", raw_post("/v1/models/classifier:predict", b"{}", ["Content-Length: 2x"]), True, 400, "Invalid Content-Length"),
    ("JSON nested 100,000 deep",
     raw_post("/v1/models/classifier:predict", DEEP, [f"Content-Length: {len(DEEP)}"]), False, 400, "nested more than 32 levels"),
    ("JSON nested 40 deep",
     raw_post("/v1/models/classifier:predict", b'{"instances": ' + b"[" * 40 + b"]" * 40 + b"}", ["Content-Length: 95"]), False, 400,
     "nested more than 32 levels"),
    ("an integer of 5,000 digits",
     raw_post("/v1/models/classifier:predict", b'{"instances": [1' + b"0" * 5000 + b"]}", ["Content-Length: 5018"]), False, 400,
     "Malformed JSON"),
    ("an unpaired surrogate",
     raw_post("/v1/models/classifier:predict", b'{"instances": ["\\ud800"]}', ["Content-Length: 25"]), False, 400, "unpaired surrogate"),
    ("a non-ASCII digit as version", b"GET /v1/models/classifier/versions/%D9%A1 HTTP/1.1\r\nHost: x\r\n\r\n", False, 400, "ASCII digits"),
    ("a superscript digit as version", b"GET /v1/models/classifier/versions/%C2%B2/metadata HTTP/1.1\r\nHost: x\r\n\r\n", False, 400,
     "ASCII digits"),
    ("a malformed request line", b"GET /v1/models/classifier extra HTTP/1.1\r\n\r\n", False, 400, "Bad request syntax"),
    ("a 30-digit version", b"GET /v1/models/classifier/versions/" + b"9" * 30 + b" HTTP/1.1\r\nHost: x\r\n\r\n", False, 400, "ASCII digits"),
]


@pytest.mark.parametrize("request_bytes,shutdown_write,status,message", [c[1:] for c in BROKEN_HTTP], ids=[c[0] for c in BROKEN_HTTP])
def test_broken_http_is_a_4xx_of_one_line(server, request_bytes, shutdown_write, status, message):
    seconds, got_status, body = server.raw(request_bytes, shutdown_write=shutdown_write, timeout=DEADLINE + 10)
    assert_one_line_error(got_status, body, status, message)
    assert seconds < DEADLINE


def test_a_stalled_body_gets_408_after_the_idle_timeout(server):
    stalled = raw_post("/v1/models/classifier:predict", b'{"instances": [', ["Content-Length: 1000"])
    seconds, status, body = server.raw(stalled, timeout=DEADLINE + 10)
    assert_one_line_error(status, body, 408, "not received in time")
    assert IDLE - 0.5 < seconds < IDLE + 3


def test_a_trickling_client_is_cut_off_at_the_read_deadline(server):
    """One byte every 0.5 s never trips the idle timeout; the deadline on the whole request does."""
    started = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        connection.sendall(raw_post("/v1/models/classifier:predict", b"", ["Content-Length: 1000"]))
        answered = b""
        for step in range(4 * DEADLINE):  # bounded: the deadline ends it well before
            if step == 2:  # meanwhile the server answers others
                assert server.predict("classifier", {"instances": ["a cat"]})[0] == 200
            readable, _, _ = select.select([connection], [], [], 0.5)
            if readable:
                answered = connection.recv(65536)
                break
            try:
                connection.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
        seconds = time.monotonic() - started
    finally:
        connection.close()
    assert seconds < DEADLINE + 3, f"the trickling client held its connection for {seconds:.1f} s"
    assert answered == b"" or answered.startswith(b"HTTP/1.1 408"), answered[:200]


# -- sampling settings per row -----------------------------------------------------------------------


def test_instances_with_distinct_seeds_run_as_one_batch(server, direct):
    prompts = [f"the cat number {index}" for index in range(256)]

    def run(seeds):
        instances = [{"prompt": p, "max_new_tokens": 4, "temperature": 1.0, "seed": s} for p, s in zip(prompts, seeds)]
        started = time.monotonic()
        status, body, _ = server.predict("gpt-clm", {"instances": instances}, timeout=120)
        assert status == 200, body
        return time.monotonic() - started, body["predictions"]

    run([7] * 256)  # warm-up: the first call of a batch size builds its kernels
    shared_seconds, shared = run([7] * 256)
    distinct_seconds, distinct = run(range(256))
    # Equal to the signature called with one scalar seed, and with a seed per row.
    assert shared == generate_directly(direct, prompts, max_new_tokens=4, temperature=1.0, seed=7)
    assert distinct == generate_directly(direct, prompts, max_new_tokens=4, temperature=1.0, seed=list(range(256)))
    assert len(set(distinct)) > len(set(shared)) / 2
    # One batch either way: 256 batches of one took 7x as long as one of 256.
    assert distinct_seconds < 3 * shared_seconds + 2, (distinct_seconds, shared_seconds)


def test_a_setting_per_row_equals_that_setting_for_the_whole_batch(direct):
    """The signature takes each setting as [] or [B]; row r of a vector call is row r of a scalar call."""
    prompts = ["the cat", "def ", "import", "the dog"]
    rows = dict(max_new_tokens=[3, 5, 7, 4], temperature=[0.0, 1.0, 0.7, 1.3], top_k=[0, 5, 0, 100], top_p=[1.0, 1.0, 0.9, 0.8],
                seed=[1, 2, 3, 4])
    together = generate_directly(direct, prompts, **rows)
    for row in range(len(prompts)):
        alone = generate_directly(direct, prompts, **{name: values[row] for name, values in rows.items()})
        assert together[row] == alone[row]


# -- limits and lifecycle ------------------------------------------------------------------------------


def test_a_port_out_of_range_is_refused():
    for port in ("99999", "80x"):
        result = subprocess.run([ZOO, "serve", "/nonexistent", "--port", port], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "0..65535" in result.stderr and "Traceback" not in result.stderr


def test_a_404_names_no_other_model(server):
    status, body, _ = server.predict("nope", {"instances": ["a"]})
    message = assert_one_line_error(status, body, 404, "Model 'nope' not found")
    assert not any(name in message for name in ("classifier", "bert-mlm", "gpt-clm"))


def test_a_busy_server_answers_503_with_retry_after(small_server):
    slow = {"instances": [f"the cat number {index}" for index in range(512)], "signature_name": "generate"}
    answers = []

    def slow_client():  # as a client should, it retries after a 503 (a probe may have taken the slot first)
        for _ in range(20):
            answers.append(small_server.predict("gpt/versions/1", slow, timeout=120))
            if answers[-1][0] != 503:
                return
            time.sleep(0.2)

    worker = threading.Thread(target=slow_client, daemon=True)
    worker.start()
    busy = []
    for _ in range(200):  # bounded; the slow request ends first
        time.sleep(0.1)
        if not worker.is_alive():
            break
        status, body, headers = small_server.predict("gpt/versions/1", generate(["def "], max_new_tokens=2), timeout=60)
        if status == 503:
            busy.append((body, headers))
        else:
            assert status == 200, body
    worker.join(120)
    assert answers[-1][0] == 200 and len(answers[-1][1]["predictions"]) == 512
    assert busy, "no request overlapped the slow one"
    body, headers = busy[0]
    assert_one_line_error(503, body, 503, "busy")
    assert headers.get("Retry-After") == "1"
    assert small_server.predict("gpt/versions/1", generate(["def "], max_new_tokens=2))[0] == 200


def test_a_version_that_failed_while_being_copied_in_is_loaded_once_complete(small_server, exports):
    source = exports[1]["gpt-clm"][2]
    target = os.path.join(small_server.root, "gpt", "2")
    os.makedirs(target)
    shutil.copy(os.path.join(source, "saved_model.pb"), target)  # the copy has only just begun
    status, body, _ = small_server.predict("gpt", generate(["def "], max_new_tokens=2))
    message = assert_one_line_error(status, body, 503, "version 2 failed to load", "variables/")
    assert small_server.root not in message and "/tmp" not in message, "a 503 shows no server path"
    status, body, _ = small_server.request("GET", "/v1/models/gpt/versions/2")
    assert body["model_version_status"][0]["state"] == "END"
    for entry in os.listdir(source):  # the copy completes
        if entry != "saved_model.pb":
            copy = shutil.copytree if os.path.isdir(os.path.join(source, entry)) else shutil.copy
            copy(os.path.join(source, entry), os.path.join(target, entry))
    status, body, _ = small_server.predict("gpt", generate(["def "], max_new_tokens=2))
    assert status == 200, body
    status, body, _ = small_server.request("GET", "/v1/models/gpt")
    assert body["model_version_status"][0] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


# -- load ------------------------------------------------------------------------------------------


def _load_jobs(direct):
    """64 clients: good classify and generate requests (with the answers they must get) and hostile ones (any 4xx)."""
    hostile = [
        ("POST", "/v1/models/gpt-clm:predict", generate(["a"], temperature=float("nan"))),
        ("POST", "/v1/models/gpt-clm:predict", generate(["a"], max_new_tokens=2_000_000_000)),
        ("POST", "/v1/models/gpt-clm:predict", generate([])),
        ("POST", "/v1/models/gpt-clm:predict", {"signature_name": "generate_ids", "inputs": {"token_ids": [[3, 9999]], "lengths": [2]}}),
        ("POST", "/v1/models/classifier:predict", b'{"instances": ["a"'),
        ("POST", "/v1/models/classifier:predict", b"[" * 5000 + b"]" * 5000),
        ("GET", "/v1/models/classifier/versions/%D9%A1", None),
        ("POST", "/v1/models/nope:predict", {"instances": ["a"]}),
    ]
    jobs = []
    for index in range(64):
        kind = index % 4
        if kind == 0:
            texts = [f"the cat number {index}", f"a saw and a drill {index}"]
            outputs = direct["classifier"]["classify"](text=tf.constant(texts))
            expected = {"label": [b.decode() for b in outputs["label"].numpy()], "probabilities": outputs["probabilities"].numpy()}
            jobs.append(("good", "POST", "/v1/models/classifier:predict", {"inputs": texts}, expected))
        elif kind == 1:
            prompts = [f"def f{index}(", "the dog"]
            jobs.append(("good", "POST", "/v1/models/gpt-clm:predict", generate(prompts, **GREEDY), generate_directly(direct, prompts)))
        elif kind == 2:
            prompts = [f"import m{index}", "the cat", "x"]
            seeds = [index, index + 1, index + 2]
            instances = [{"prompt": p, "max_new_tokens": 5, "temperature": 1.0, "top_k": 20, "seed": s} for p, s in zip(prompts, seeds)]
            expected = generate_directly(direct, prompts, max_new_tokens=5, temperature=1.0, top_k=20, seed=seeds)
            jobs.append(("good", "POST", "/v1/models/gpt-clm:predict", {"instances": instances}, expected))
        else:
            jobs.append(("hostile", *hostile[(index // 4) % len(hostile)], None))
    return jobs


def _check(job, answer):
    kind, _, path, _, expected = job
    status, body, _ = answer
    if kind == "hostile":
        assert 400 <= status < 500 and set(body) == {"error"}, (path, status, body)
    elif "classifier" in path:
        assert status == 200, body
        assert body["outputs"]["label"] == expected["label"]
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected["probabilities"], atol=1e-6)
    elif "instances" in job[3]:
        assert status == 200 and body["predictions"] == expected, body
    else:
        assert status == 200 and body["outputs"] == expected, body


def test_64_concurrent_clients_mixing_good_and_hostile_requests(server, direct):
    jobs = _load_jobs(direct)

    def run(job):
        _, method, path, body, _ = job
        return server.request(method, path, body, timeout=120)

    def round_of_64():
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(run, jobs))
        for job, answer in zip(jobs, answers):
            _check(job, answer)

    round_of_64()  # warm-up: kernels and caches for these batch sizes
    rss = server.rss_mb()
    started = time.monotonic()
    for _ in range(2):
        round_of_64()
    assert server.rss_mb() - rss < 100, f"RSS grew from {rss:.0f} MB to {server.rss_mb():.0f} MB"
    assert time.monotonic() - started < 60


def test_no_request_was_a_server_fault(server):
    """Every hostile request above got its 4xx without a 500 or a traceback in the server log."""
    log = server.log()
    assert "Error serving" not in log and "Traceback" not in log and "Internal server error" not in log, log[-3000:]
    assert server.request("GET", "/v1/models/classifier")[0] == 200
