"""Validation of SGLang replies: nothing of a reply is trusted.

Token ids, lengths, log-probs and every ``meta_info`` field are checked; anything else
raises :class:`~strace_ds.rollout.sglang.client.SGLangReplyError` (a ``ValueError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from strace_ds.rollout.base import (
    FINISH_REASONS,
)
from strace_ds.rollout.sglang.client import SGLangReplyError

LOGPROB_TOLERANCE = 1e-4
"""Largest positive log-prob accepted (float noise on a near-certain token; clamped to 0)."""


# --------------------------------------------------------------------------- parsing


@dataclass
class _Answer:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    weight_version: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_generate_response(
    body: Any,
    n_rows: int,
    url: str = "?",
    vocab_size: int | None = None,
    max_new_tokens: int | None = None,
) -> list[_Answer]:
    """Answers of one ``/generate`` response (a dict, or a list for batches / ``n > 1``).

    Nothing of a reply is trusted. It must hold ``n_rows`` answers, each a dict with
    ``output_ids`` (integer token ids in ``[0, vocab_size)``, at most ``max_new_tokens``; the
    bounds are skipped when None) and ``meta_info`` with ``output_token_logprobs`` (one
    ``[logprob, token_id, text]`` per output token, the same token id, the log-prob a finite
    number <= 0: up to :data:`LOGPROB_TOLERANCE` of float noise is accepted and clamped to 0),
    ``weight_version`` (a string or integer) and ``finish_reason.type`` (one of
    :data:`~strace_ds.rollout.base.FINISH_REASONS`). Anything else raises
    :class:`SGLangReplyError` (a ``ValueError``) naming the URL, the answer and the field.
    """
    items = body if isinstance(body, list) else [body]
    if len(items) != n_rows:
        raise SGLangReplyError(
            f"{url}/generate returned {len(items)} answers, expected {n_rows} (one per sample "
            f"requested): {str(body)[:300]}"
        )
    return [_parse_answer(item, k, url, vocab_size, max_new_tokens) for k, item in enumerate(items)]


def _parse_answer(
    item: Any, k: int, url: str, vocab_size: int | None, max_new_tokens: int | None
) -> _Answer:
    def bad(what: str) -> SGLangReplyError:
        return SGLangReplyError(f"{url}/generate answer {k}: {what}; answer: {str(item)[:300]}")

    if not isinstance(item, dict):
        raise bad(f"expected a dict with output_ids and meta_info, got {type(item).__name__}")
    if "output_ids" not in item:
        raise bad("output_ids missing")
    ids = item["output_ids"]
    if not isinstance(ids, list):
        raise bad(f"output_ids must be a list of token ids, got {type(ids).__name__}")
    meta = item.get("meta_info")
    if not isinstance(meta, dict):
        raise bad(f"meta_info missing or not a dict (got {type(meta).__name__})")
    if "output_token_logprobs" not in meta:
        raise bad("meta_info.output_token_logprobs missing (was return_logprob sent?)")
    entries = meta["output_token_logprobs"]
    if not isinstance(entries, list):
        raise bad(
            "meta_info.output_token_logprobs must be a list of [logprob, token_id, text], "
            f"got {type(entries).__name__}"
        )
    version = meta.get("weight_version")
    if not (_is_int(version) or isinstance(version, str)):
        raise bad(f"meta_info.weight_version missing or not a string/integer: {version!r}")
    if "finish_reason" not in meta:
        raise bad("meta_info.finish_reason missing")
    reason = meta["finish_reason"]
    if not isinstance(reason, dict) or reason.get("type") not in FINISH_REASONS:
        raise bad(
            f"meta_info.finish_reason {reason!r}: unknown finish_reason, expected "
            f"{{'type': one of {', '.join(FINISH_REASONS)}}}"
        )
    if max_new_tokens is not None and len(ids) > max_new_tokens:
        raise bad(f"output_ids has {len(ids)} tokens, more than max_new_tokens = {max_new_tokens}")
    for j, t in enumerate(ids):
        if not _is_int(t):
            raise bad(f"output_ids[{j}] must be an integer token id, got {t!r}")
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            raise bad(
                f"output_ids[{j}] = {t} is not a token id of the vocabulary "
                f"(0 <= id < vocab_size = {vocab_size})"
            )
    if len(entries) != len(ids):
        raise bad(
            f"meta_info.output_token_logprobs has {len(entries)} entries for {len(ids)} "
            "tokens in output_ids"
        )
    logprobs = []
    for j, (entry, t) in enumerate(zip(entries, ids)):
        field = f"meta_info.output_token_logprobs[{j}]"
        if not isinstance(entry, (list, tuple)) or len(entry) < 2:
            raise bad(f"{field} must be [logprob, token_id, text], got {entry!r}")
        lp, tid = entry[0], entry[1]
        if not _is_int(tid):
            raise bad(f"{field} token id must be an integer, got {tid!r}")
        if tid != t:
            raise bad(
                f"output_token_logprobs token ids do not match output_ids ({field} has "
                f"{tid}, output_ids[{j}] = {t})"
            )
        if not _is_number(lp):
            raise bad(f"{field} log-prob must be a number, got {lp!r}")
        lp = float(lp)
        if not math.isfinite(lp):
            raise bad(f"{field} log-prob = {lp} is not finite")
        if lp > LOGPROB_TOLERANCE:
            raise bad(
                f"{field} log-prob = {lp:g} > 0: a log-probability must be <= 0 "
                f"(float noise up to {LOGPROB_TOLERANCE:g} is accepted)"
            )
        logprobs.append(min(lp, 0.0))
    return _Answer(list(ids), logprobs, reason["type"], str(version))


def _expect_dict(body: Any, url: str, path: str, empty_ok: bool = True) -> dict[str, Any]:
    """``body`` if it is a JSON object (None -> ``{}`` when ``empty_ok``), else
    :class:`SGLangReplyError` naming the URL and the endpoint."""
    if body is None and empty_ok:
        return {}
    if not isinstance(body, dict):
        raise SGLangReplyError(
            f"{url}{path}: expected a JSON object (dict) in the reply, got "
            f"{type(body).__name__}: {str(body)[:300]}"
        )
    return body
