"""A scripted SGLang look-alike over HTTP, for tests that need no real server."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"
"""A scripted status: read the request, then never answer (until :meth:`FakeSGLang.close`)."""


@dataclass(frozen=True)
class Trickle:
    """A scripted status: answer 200 with the body, the whole response (status line and headers
    included) one byte every ``interval_s`` seconds: no socket read ever waits long."""

    interval_s: float = 1.0


def sglang_answer(ids: list[int], version: str = "0", reason: str = "length") -> dict[str, Any]:
    """One ``/generate`` answer as SGLang 0.5.23 shapes it (``return_logprob=True``)."""
    return {
        "output_ids": ids,
        "meta_info": {
            "finish_reason": {"type": reason},
            "weight_version": version,
            "output_token_logprobs": [[-0.5 - 0.1 * k, t, None] for k, t in enumerate(ids)],
        },
    }


class FakeSGLang:
    """A scripted SGLang look-alike on a local ``http.server``; records every request.

    ``script[path]`` is a list of ``(status, body)`` consumed in order (the last one repeats);
    ``/generate`` without a script answers like SGLang: one answer per row, prompt-major,
    each answer ``[first prompt token + 100 + row-in-group]``, at ``self.version``.
    A scripted body may be ``bytes`` (sent as is, e.g. non-JSON); a scripted status may be
    :data:`HANG` (never answer) or a :class:`Trickle` (answer one byte at a time).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.script: dict[str, list[tuple[int, Any]]] = {}
        self.version = "0"
        self.model_path = "/nonexistent"
        """What ``/server_info`` and ``/model_info`` report as the served model."""
        self._closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, body))
                status, out = fake.answer(self.path, body)
                if status == HANG:
                    fake._closing.wait()
                    return
                data = out if isinstance(out, bytes) else (
                    b"" if out is None else json.dumps(out).encode())
                if isinstance(status, Trickle):
                    self._trickle(data, status.interval_s)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, data: bytes, interval_s: float) -> None:
                raw = (f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data
                try:
                    for k in range(len(raw)):
                        self.wfile.write(raw[k:k + 1])
                        if fake._closing.wait(interval_s):
                            return
                except OSError:  # the client gave up
                    pass

            do_GET = do_POST = _reply  # noqa: N815 (http.server naming)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: Any) -> tuple[int, Any]:
        if path in self.script:
            steps = self.script[path]
            return steps.pop(0) if len(steps) > 1 else steps[0]
        if path == "/health":
            return 200, None
        if path == "/server_info":
            return 200, {"weight_version": "0", "tp_size": 1, "model_path": self.model_path}
        if path == "/model_info":
            return 200, {"weight_version": self.version, "model_path": self.model_path}
        if path == "/update_weight_version":
            self.version = body["new_version"]
            return 200, {"success": True}
        if path == "/generate":
            prompts = body["input_ids"]
            params = body["sampling_params"]
            n = params["n"] if isinstance(params, dict) else 1
            return 200, [
                sglang_answer([p[0] + 100 + j], self.version) for p in prompts for j in range(n)
            ]
        return 404, {"error": f"no route {path}"}

    def close(self) -> None:
        self._closing.set()  # releases HANG and Trickle handlers
        self.httpd.shutdown()
        self.httpd.server_close()
