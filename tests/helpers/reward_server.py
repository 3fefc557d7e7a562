"""A tiny remote reward server on 127.0.0.1 for the ``http://`` term of ``--reward``.

``serve(mode)`` starts it in a thread and yields its URL (``http://127.0.0.1:<port>/score``).
Modes: ``ok`` (reward 1 where the response contains the gold, else 0; the empty batch gets
``{"rewards": []}``), and on non-empty batches ``hang``, ``short`` (one reward too few),
``strings`` (non-numbers), ``garbage`` (non-JSON), ``http500``. Run as a script
(``python reward_server.py PORTFILE``) it serves ``ok`` until killed, writing its URL first.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _handler(mode: str, seen: list[dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            n = len(request["responses"])
            if n and mode == "hang":
                time.sleep(30)
            if n and mode == "garbage":
                return self._reply(200, b"<html>not json")
            if n and mode == "http500":
                return self._reply(500, b'{"error": "boom"}')
            rewards: list = [
                float(g in r) for r, g in zip(request["responses"], request["golds"], strict=True)
            ]
            if n and mode == "short":
                rewards = rewards[:-1]
            if n and mode == "strings":
                rewards = ["1.0", None, True, *rewards[3:]]
            self._reply(200, json.dumps({"rewards": rewards}).encode())

    return Handler


@contextlib.contextmanager
def serve(mode: str = "ok") -> Iterator[tuple[str, list[dict]]]:
    """``(url, requests seen)`` of a server in ``mode``, stopped on exit."""
    seen: list[dict] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mode, seen))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/score", seen
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    with serve("ok") as (url, _):
        with open(sys.argv[1], "w") as f:
            f.write(url)
        while True:
            time.sleep(60)
