"""A real `zoo serve` process for the reliability tests, and HTTP helpers that can misbehave.

`ZooServer` starts `.venv/bin/zoo serve ROOT --port 0` on 127.0.0.1 (the port it picks is read
from its start line, so parallel test runs never collide), waits until it answers, and stops
it with SIGTERM (then SIGKILL). Its stderr (start line and access log) goes to a file that the
tests read for tracebacks.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

ZOO = os.path.join(os.path.dirname(sys.executable), "zoo")
_ADDRESS = re.compile(r"Serving .* at http://127\.0\.0\.1:(?P<port>[0-9]+)/")


class ZooServer:
    """A `zoo serve` process: started by the constructor, answering once `wait()` returns."""

    def __init__(self, root, log_path, *options):
        self.root = str(root)
        self.log_path = str(log_path)
        self._log = open(self.log_path, "wb")
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.process = subprocess.Popen(
            [ZOO, "serve", self.root, "--port", "0", *map(str, options)],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, env=environment,
        )
        self.pid = self.process.pid
        self.port = None

    def wait(self, timeout=180):
        """Waits for the start line (the models are loaded by then); returns self."""
        self.port = self._wait_for_port(timeout)
        return self

    def _wait_for_port(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _ADDRESS.search(self.log())
            if match:
                return int(match.group("port"))
            if self.process.poll() is not None:
                raise RuntimeError(f"zoo serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"zoo serve did not start within {timeout} s:\n{self.log()[-3000:]}")

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss_mb(self):
        """The server's resident memory (VmRSS) in MB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, parsed JSON body, headers) of one request; `body` is JSON-encoded unless bytes."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
            connection.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            return response.status, json.loads(payload), dict(response.getheaders())
        finally:
            connection.close()

    def predict(self, model, body, **options):
        return self.request("POST", f"/v1/models/{model}:predict", body, **options)

    def raw(self, data, shutdown_write=False, timeout=30):
        """Sends raw bytes, then reads until the server closes: (seconds taken, status or None, parsed body or None)."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as connection:
            connection.sendall(data)
            if shutdown_write:
                connection.shutdown(socket.SHUT_WR)
            status, body = read_response(connection)
            return time.monotonic() - started, status, body

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        self._log.close()


def read_response(connection):
    """(status, parsed JSON body) read from a socket until the server closes it; (None, None) if it sent nothing."""
    chunks = []
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, json.loads(body)


def _dechunk(body):
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def assert_one_line_error(status, body, expected_status, *fragments):
    """A JSON error of one line with the expected status, mentioning every fragment and no graph internals."""
    assert status == expected_status, (status, body)
    assert set(body) == {"error"}, body
    message = body["error"]
    assert "\n" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    for internal in ("Detected at node", "Traceback", "{{node", "Graph execution error"):
        assert internal not in message, message
    return message
