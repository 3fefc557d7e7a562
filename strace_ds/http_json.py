"""JSON over HTTP/1.1 where every call has ONE wall-clock deadline, retries included.

Used by the SGLang client (:mod:`strace_ds.rollout.sglang.client`) and remote rewards
(:mod:`strace_ds.rewards.remote`); each turns an :class:`Exchange` into its own errors.

A per-socket-read timeout bounds nothing against a server that trickles bytes, and retries
multiply it; here each attempt gets what is left of the call's budget, a watchdog timer shuts
the socket down when the deadline passes (waking a blocked connect, send or recv), and a retry
whose backoff would end past the deadline is not made. So :meth:`DeadlineHttp.exchange` returns
within its budget plus scheduling noise, whatever the server does. One connection per request
(no pooling: the requests are few and long, and a connection a watchdog killed is never reused).
Proxies (``HTTP_PROXY``) are not used. Hostname resolution is not covered by the deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

RETRY_STATUS = (429, 502, 503, 504)
"""HTTP statuses worth retrying (overload, gateway); any other error status is returned at once."""
CONNECT_TIMEOUT_S = 10.0
"""Longest TCP connect of one attempt (within the call's deadline)."""


class AbandonedError(Exception):
    """An attempt cut off by the watchdog (deadline) or by :meth:`DeadlineHttp.close`."""


@dataclass
class Exchange:
    """What one call came to: a reply (``status`` set; an error status other than
    :data:`RETRY_STATUS` included), or the record of its failed attempts (``status`` None)."""

    status: int | None
    body: bytes
    attempts: int
    elapsed: float
    last: str = ""
    """The last failure (``"ConnectionRefusedError: ..."``, ``"HTTP 503: ..."``)."""
    timed_out: bool = False
    """The deadline, not the retry count, ended the call."""
    closed: bool = False
    """:meth:`DeadlineHttp.close` abandoned it."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _shutdown(conn: http.client.HTTPConnection) -> None:
    """Wake whatever thread is blocked on ``conn``'s socket (connect, send or recv)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class DeadlineHttp:
    """Deadline-bounded requests with retries of connection failures and :data:`RETRY_STATUS`
    (exponential backoff from ``backoff_s``) while the deadline allows."""

    def __init__(self, timeout_s: float, max_retries: int, backoff_s: float) -> None:
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._inflight: dict[int, Any] = {}  # id -> abort(reason), for close()
        self._closed = False

    def exchange(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        closed_reason: str = "the client was closed",
    ) -> Exchange:
        """Send ``data`` to ``url`` (the full URL) until a reply that is not a
        :data:`RETRY_STATUS`, within ONE deadline of ``timeout_s`` (default the client's)."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        retries = self.max_retries if retries is None else retries
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
                status, body = self._send(method, url, data, deadline, closed_reason)
            except AbandonedError as e:
                last, timed_out = str(e), not self._closed
                break
            except (OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status}: {body.decode('utf-8', errors='replace')[:300]}"
                continue
            return Exchange(status, body, attempts, time.monotonic() - start, last)
        return Exchange(None, b"", attempts, time.monotonic() - start, last, timed_out,
                        self._closed)  # fmt: skip

    def _send(
        self, method: str, url: str, data: bytes | None, deadline: float, closed_reason: str
    ) -> tuple[int, bytes]:
        """One attempt: ``(status, body)``, or :class:`AbandonedError` once the deadline passes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AbandonedError("no time left in the deadline")
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
            self._inflight[key] = (abort, closed_reason)
        if self._closed:  # close() ran since exchange() checked: do not start
            why.append(closed_reason)
        watchdog.start()
        try:
            conn.connect()
            if why:
                raise AbandonedError(why[0])
            # A backstop per recv; the watchdog bounds the whole exchange.
            conn.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            headers = {"Accept": "application/json", "Connection": "close"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as e:
            if why:
                raise AbandonedError(f"{why[0]} ({type(e).__name__}: {e})") from e
            raise
        finally:
            watchdog.cancel()
            with self._lock:
                self._inflight.pop(key, None)
            conn.close()
        if why:  # shut down at the very end: a body without Content-Length may be cut
            raise AbandonedError(why[0])
        return status, body

    def close(self) -> None:
        """Abandon every request in flight (their calls return at once) and refuse new ones."""
        self._closed = True
        with self._lock:
            aborts = list(self._inflight.values())
        for abort, reason in aborts:
            abort(reason)
