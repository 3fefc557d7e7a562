"""The deadline-bounded JSON client both the SGLang engine and remote rewards use: retries of
overload statuses, ONE deadline against a hung server, close() abandoning a call in flight.
(Its clients' own error messages: tests/unit/rollout/test_reliability_sglang.py,
tests/unit/rewards/test_remote_and_trl_rewards.py.)"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from strace_ds.http_json import DeadlineHttp


@pytest.fixture
def server():
    state = {"answers": [], "seen": 0, "hang": threading.Event()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            state["seen"] += 1
            if not state["answers"]:
                state["hang"].wait(30)  # a hung server: never answers in time
                return
            status, body = state["answers"].pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/score", state
    state["hang"].set()
    httpd.shutdown()


def test_overload_is_retried_and_other_errors_are_returned(server):
    url, state = server
    state["answers"] = [(503, b"busy"), (429, b"slow down"), (200, b'{"ok": 1}')]
    done = DeadlineHttp(10.0, 3, 0.01).exchange("POST", url, b"{}")
    assert (done.status, done.body, done.attempts, state["seen"]) == (200, b'{"ok": 1}', 3, 3)
    assert done.last.startswith("HTTP 429: slow down")
    state["answers"] = [(400, b"bad request")]
    done = DeadlineHttp(10.0, 3, 0.01).exchange("POST", url, b"{}")
    assert (done.status, done.text, done.attempts) == (400, "bad request", 1)


def test_one_deadline_bounds_a_hung_server_retries_included(server):
    url, _ = server
    start = time.monotonic()
    done = DeadlineHttp(0.5, 5, 0.01).exchange("POST", url, b"{}")
    took = time.monotonic() - start
    assert done.status is None and done.timed_out and not done.closed
    assert "deadline passed mid-request" in done.last
    assert 0.45 < took < 2.0, took


def test_close_abandons_a_call_in_flight(server):
    url, _ = server
    client = DeadlineHttp(20.0, 0, 0.01)
    threading.Timer(0.3, client.close).start()
    start = time.monotonic()
    done = client.exchange("POST", url, b"{}", closed_reason="closed by the test")
    assert done.status is None and done.closed and "closed by the test" in done.last
    assert time.monotonic() - start < 5.0
