"""HTTP to SGLang servers: the engine's errors and the deadline-bounded JSON client.

Every call has ONE wall-clock deadline, retries and backoffs included (see
:mod:`strace_ds.rollout.sglang.engine`, "Errors").
"""

from __future__ import annotations

import json
from typing import Any

from strace_ds.http_json import CONNECT_TIMEOUT_S as CONNECT_TIMEOUT_S  # re-exported
from strace_ds.http_json import RETRY_STATUS as RETRY_STATUS  # re-exported
from strace_ds.http_json import DeadlineHttp

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


class _Http:
    """The SGLang engine's JSON calls: :class:`strace_ds.http_json.DeadlineHttp` (ONE wall-clock
    deadline per call, retries included) with the engine's errors, which name the URL, the
    operation and the attempts."""

    def __init__(self, timeout_s: float, max_retries: int, backoff_s: float) -> None:
        self._client = DeadlineHttp(timeout_s, max_retries, backoff_s)

    @property
    def timeout_s(self) -> float:
        return self._client.timeout_s

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
        budget = self._client.timeout_s if timeout_s is None else timeout_s
        op = operation(path)
        data = None if payload is None else json.dumps(payload, allow_nan=False).encode()
        done = self._client.exchange(method, url.rstrip("/") + path, data, budget, retries,
                                     closed_reason="the rollout engine was closed")  # fmt: skip
        if done.status is not None:
            if done.status >= 400:
                raise SGLangServerError(
                    f"SGLang server {url} answered {method} {path} ({op}) with HTTP "
                    f"{done.status}: {done.text[:1000]}"
                )
            if not done.body.strip():
                return None  # e.g. GET /health answers 200 with an empty body
            try:
                return json.loads(done.body)
            except ValueError as e:
                raise SGLangReplyError(
                    f"SGLang server {url} answered {method} {path} ({op}) with non-JSON: "
                    f"{done.text[:300]}"
                ) from e
        hint = (
            f"Is the server at {url} running and reachable? Start one with "
            "scripts/launch_sglang.py."
        )
        if done.closed:
            raise SGLangServerError(
                f"SGLang server {url}: {method} {path} ({op}) abandoned after "
                f"{done.elapsed:.1f} s: the rollout engine was closed"
            )
        if done.timed_out:
            raise SGLangServerError(
                f"SGLang server {url} failed {method} {path} ({op}): no complete answer within "
                f"the {budget:g} s deadline (sglang_timeout_s; {done.attempts} attempt(s) in "
                f"{done.elapsed:.1f} s, last: {done.last or 'none'}). {hint} If it is only "
                "slow, raise --sglang_timeout_s (the engine's timeout_s)."
            )
        raise SGLangServerError(
            f"SGLang server {url} failed {method} {path} {done.attempts} times in "
            f"{done.elapsed:.1f} s ({op}; last: {done.last}). {hint}"
        )

    def close(self) -> None:
        """Abandon every request in flight (their calls raise at once) and refuse new ones."""
        self._client.close()
