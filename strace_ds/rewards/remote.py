"""Remote rewards: a ``--reward`` term that is a URL, scored by one batched POST per batch.

Request (``POST <url>``, ``Content-Type: application/json``)::

    {"prompts": [str, ...], "responses": [str, ...], "golds": [str, ...],
     "examples": [{<the dataset row's other columns>}, ...]}

all four lists aligned (one entry per answer). Reply (HTTP 200, JSON)::

    {"rewards": [float | null, ...]}

one entry per answer, in order. An entry that is not a finite number within
``|r| <=`` :data:`strace_ds.rewards.worker.MAX_ABS_REWARD` (``null``, a string, ``NaN``, a bool)
is a grading error of that answer; a reply that is not JSON, has no ``rewards`` list of the right
length, or an HTTP error status makes every answer of the batch a grading error (reward 0, never
correct). At start-up the pool sends the empty batch (all lists empty) and needs
``{"rewards": []}`` back: an unreachable server is a one-line start-up error.

Every POST has ONE wall-clock deadline (``timeout_s``), retries included: connection failures and
HTTP 429/502/503/504 are retried with exponential backoff while the deadline allows; a watchdog
shuts the socket down when it passes, so a hung or trickling server costs at most ``timeout_s``.
(:class:`strace_ds.http_json.DeadlineHttp`, the SGLang client's too.)
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from strace_ds.http_json import DeadlineHttp

PROBE_TIMEOUT_S = 10.0
"""Deadline of the start-up probe (or the reward's ``timeout_s`` when shorter)."""


def is_remote(name: str) -> bool:
    """True for a term naming a remote reward (``http://...`` or ``https://...``)."""
    return name.startswith(("http://", "https://"))


def check_url(name: str) -> str | None:
    """What is wrong with a remote reward's URL (it needs a host and a path), else None."""
    parts = urlsplit(name)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "a remote reward is http(s)://HOST[:PORT]/PATH"
    if parts.path in ("", "/"):
        return (
            "a remote reward's URL needs a path (http://HOST:PORT/PATH, e.g. "
            "http://127.0.0.1:8000/score; a weight goes after it: .../score:0.5)"
        )
    return None


class RemoteRewardError(RuntimeError):
    """A remote reward's server could not be reached or did not answer well in time."""


class RemoteReward:
    """The reward a URL names: :meth:`score` grades a whole batch with one POST."""

    def __init__(
        self, url: str, timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.25
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        """Wall-clock deadline of one batch's POST, retries and backoffs included."""
        self.retries = retries
        self.backoff_s = backoff_s

    def __reduce__(self) -> tuple[Any, ...]:  # plain data: it may travel in a pickled spec
        return (RemoteReward, (self.url, self.timeout_s, self.retries, self.backoff_s))

    def _call(self, payload: dict[str, Any], timeout_s: float) -> Any:
        data = json.dumps(payload, allow_nan=False).encode()
        client = DeadlineHttp(timeout_s, self.retries, self.backoff_s)
        done = client.exchange("POST", self.url, data)
        if done.status is None:
            raise RemoteRewardError(
                f"{self.url}: no reply within the {timeout_s:g} s deadline "
                f"({done.elapsed:.1f} s, {done.attempts} attempt(s); last: {done.last or 'none'})"
            )
        if done.status >= 400:
            raise RemoteRewardError(f"{self.url} answered HTTP {done.status}: {done.text[:200]}")
        try:
            return json.loads(done.body)
        except ValueError as exc:
            raise RemoteRewardError(
                f"{self.url} answered with non-JSON: {done.text[:200]!r}"
            ) from exc

    def probe(self) -> None:
        """Send the empty batch; raise :class:`RemoteRewardError` unless ``{"rewards": []}``."""
        reply = self._call(
            {"prompts": [], "responses": [], "golds": [], "examples": []},
            min(PROBE_TIMEOUT_S, self.timeout_s),
        )
        if not (isinstance(reply, dict) and reply.get("rewards") == []):
            raise RemoteRewardError(
                f"{self.url} answered the empty batch with {str(reply)[:200]!r}; it must "
                "answer {\"rewards\": []} (docs/TRAINING.md, 'Rewards')"
            )

    def score(
        self,
        responses: list[str],
        golds: list[str],
        examples: list[dict[str, Any]],
        prompts: list[str],
    ) -> tuple[list[float], list[str | None]]:
        """``(values, errors)`` per answer; every failure is an error (value 0), never raised."""
        from strace_ds.rewards.worker import _checked_reward

        n = len(responses)
        try:
            reply = self._call({"prompts": prompts, "responses": responses, "golds": golds,
                                "examples": examples}, self.timeout_s)  # fmt: skip
            values = reply.get("rewards") if isinstance(reply, dict) else None
            if not isinstance(values, list) or len(values) != n:
                got = f"{len(values)} rewards" if isinstance(values, list) else str(reply)[:200]
                raise RemoteRewardError(
                    f'{self.url} must answer {{"rewards": [...]}} with {n} numbers, got {got}'
                )
        except (RemoteRewardError, ValueError, TypeError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            return [0.0] * n, [error] * n
        out: list[float] = []
        errors: list[str | None] = []
        for v in values:
            try:
                if isinstance(v, bool) or v is None:
                    raise TypeError(f"the reward returned {v!r}; return a finite float")
                out.append(_checked_reward(v))
                errors.append(None)
            except (TypeError, ValueError) as exc:
                out.append(0.0)
                errors.append(f"{type(exc).__name__}: {exc}"[:500])
        return out, errors
