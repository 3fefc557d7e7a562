"""HTTP to SGLang servers: the engine's errors and the deadline-bounded JSON client.

Every call has ONE wall-clock deadline, retries and backoffs included (see
:mod:`strace_ds.rollout.sglang.engine`, "Errors").
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

RETRY_STATUS = (429, 502, 503, 504)
"""HTTP statuses worth retrying (overload, gateway); any other error status fails at once."""
CONNECT_TIMEOUT_S = 10.0
"""Longest TCP connect of one attempt (within the call's deadline)."""
HEALTH_TIMEOUT_S = 10.0
"""Deadline of the start-up ``/health`` probe (or the engine's ``timeout_s`` when shorter)."""


class SGLangError(RuntimeError):
    """Base class of the engine's errors."""


class SGLangServerError(SGLangError):
    """A server is unreachable, timed out, or answered with an error."""


class SGLangReplyError(SGLangServerError, ValueError):
    """A server answered, but the reply is malformed (types, shapes, values); not retried."""


class StaleWeightsError(SGLangError):
    """A server answered with weights of another version than the engine last synced."""


# --------------------------------------------------------------------------- HTTP


def operation(path: str) -> str:
    """What a request to ``path`` does, as errors name it: ``generate``, ``update_weights``
    (every weight-sync endpoint), ``health``, or the path itself (``model_info``, ...)."""
    if path == "/generate":
        return "generate"
    if path == "/health":
        return "health"
    if "weight" in path:  # /update_weights_from_*, /begin|end_weight_update, /update_weight_version
        return "update_weights"
    return path.strip("/")


class _AbandonedError(Exception):
    """An attempt cut off by the watchdog (deadline) or by :meth:`_Http.close`."""


def _shutdown(conn: http.client.HTTPConnection) -> None:
    """Wake whatever thread is blocked on ``conn``'s socket (connect, send or recv)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Http:
    """JSON over HTTP/1.1 where every call has ONE wall-clock deadline, retries included.

    A per-socket-read timeout bounds nothing against a server that trickles bytes, and retries
    multiply it; here each attempt gets what is left of the call's budget (``timeout_s``), a
    watchdog timer shuts the socket down when the deadline passes (waking a blocked connect,
    send or recv), and a retry whose backoff would end past the deadline is not made. So a call
    returns or raises :class:`SGLangServerError` (URL, operation, attempts) within ``timeout_s``
    plus scheduling noise, whatever the server does. One connection per request (no pooling:
    the requests are few and long, and a connection a watchdog killed is never reused).
    Proxies (``HTTP_PROXY``) are not used. Hostname resolution is not covered by the deadline.
    """

    def __init__(self, timeout_s: float, max_retries: int, backoff_s: float) -> None:
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._inflight: dict[int, Any] = {}  # id -> abort(reason), for close()
        self._closed = False

    def call(
        self,
        method: str,
        url: str,
        path: str,
        payload: Any = None,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> Any:
        """Send one request, retrying transient failures (connection errors, HTTP 429/502/503/
        504) within one deadline; return the decoded JSON body (None for an empty body)."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        retries = self.max_retries if retries is None else retries
        op = operation(path)
        data = None if payload is None else json.dumps(payload, allow_nan=False).encode()
        start = time.monotonic()
        deadline = start + budget
        last, attempts, timed_out = "", 0, False
        for attempt in range(retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                if time.monotonic() + delay >= deadline:
                    timed_out = True  # the retry could not finish in time: do not make it
                    last += f"; no retry: its {delay:g} s backoff would end past the deadline"
                    break
                time.sleep(delay)
            if self._closed:
                break
            attempts += 1
            try:
                status, body = self._send(method, url, path, data, deadline)
            except _AbandonedError as e:
                last, timed_out = str(e), not self._closed
                break
            except (OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                continue
            text = body.decode("utf-8", errors="replace")
            if status in RETRY_STATUS:
                last = f"HTTP {status}: {text[:300]}"
                continue
            if status >= 400:
                raise SGLangServerError(
                    f"SGLang server {url} answered {method} {path} ({op}) with HTTP {status}: "
                    f"{text[:1000]}"
                )
            if not body.strip():
                return None  # e.g. GET /health answers 200 with an empty body
            try:
                return json.loads(body)
            except ValueError as e:
                raise SGLangReplyError(
                    f"SGLang server {url} answered {method} {path} ({op}) with non-JSON: "
                    f"{text[:300]}"
                ) from e
        elapsed = time.monotonic() - start
        hint = (
            f"Is the server at {url} running and reachable? Start one with "
            "scripts/launch_sglang.py."
        )
        if self._closed:
            raise SGLangServerError(
                f"SGLang server {url}: {method} {path} ({op}) abandoned after {elapsed:.1f} s: "
                "the rollout engine was closed"
            )
        if timed_out:
            raise SGLangServerError(
                f"SGLang server {url} failed {method} {path} ({op}): no complete answer within "
                f"the {budget:g} s deadline (sglang_timeout_s; {attempts} attempt(s) in "
                f"{elapsed:.1f} s, last: {last or 'none'}). {hint} If it is only slow, raise "
                "--sglang_timeout_s (the engine's timeout_s)."
            )
        raise SGLangServerError(
            f"SGLang server {url} failed {method} {path} {attempts} times in {elapsed:.1f} s "
            f"({op}; last: {last}). {hint}"
        )

    def _send(
        self, method: str, url: str, path: str, data: bytes | None, deadline: float
    ) -> tuple[int, bytes]:
        """One attempt: ``(status, body)``, or :class:`_AbandonedError` once the deadline passes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _AbandonedError("no time left in the deadline")
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname or "", parts.port, timeout=min(CONNECT_TIMEOUT_S, remaining))
        why: list[str] = []

        def abort(reason: str) -> None:
            why.append(reason)
            _shutdown(conn)

        watchdog = threading.Timer(remaining, abort, ("deadline passed mid-request",))
        watchdog.daemon = True
        key = id(watchdog)
        with self._lock:
            self._inflight[key] = abort
        if self._closed:  # close() ran since call() checked: do not start
            why.append("the rollout engine was closed")
        watchdog.start()
        try:
            conn.connect()
            if why:
                raise _AbandonedError(why[0])
            # A backstop per recv; the watchdog bounds the whole exchange.
            conn.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            headers = {"Accept": "application/json", "Connection": "close"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, parts.path.rstrip("/") + path, body=data, headers=headers)
            response = conn.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as e:
            if why:
                raise _AbandonedError(f"{why[0]} ({type(e).__name__}: {e})") from e
            raise
        finally:
            watchdog.cancel()
            with self._lock:
                self._inflight.pop(key, None)
            conn.close()
        if why:  # shut down at the very end: a body without Content-Length may be cut
            raise _AbandonedError(why[0])
        return status, body

    def close(self) -> None:
        """Abandon every request in flight (their calls raise at once) and refuse new ones."""
        self._closed = True
        with self._lock:
            aborts = list(self._inflight.values())
        for abort in aborts:
            abort("the rollout engine was closed")
