"""Binary correctness reward: the response's last boxed answer checked against gold by math-verify.

This runs in-process; untrusted responses should reach it through
:class:`strace_ds.rewards.pool.RewardPool`, which adds a hard per-item timeout in worker
processes. Nothing from the response is evaluated except by math-verify's own LaTeX/expression
parser.
"""

from __future__ import annotations

import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from strace_ds.rewards.extract import extract_boxed_answer

# Boxed answers first (priority 0, math-verify's default is 50, after "final answer is"
# patterns), then plain expressions. The strings we hand to `parse` are always `\boxed{...}`,
# so the boxed pattern is the one that fires.
EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

MATH_VERIFY_TIMEOUT_S = 5
"""math-verify's own (signal.alarm) limit for one parse or one comparison, in seconds."""


def _internal_timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works on the main thread; elsewhere
    # math-verify logs an error and fails every item. Off the main thread we disable them and rely
    # on the caller (RewardPool) for the hard timeout.
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    return None


def _as_boxed(answer: str) -> str:
    """Wrap a bare gold answer as ``\\boxed{...}`` so the same extraction path parses it."""
    inner = extract_boxed_answer(answer)
    if inner is None:
        inner = answer.strip().strip("$").strip()
    return "\\boxed{" + inner + "}"


def grade_answer(response: str, gold: str) -> float:
    """1.0 if the last ``\\boxed{}`` of ``response`` equals ``gold`` mathematically, else 0.0.

    Following math-verify's documented order, ``gold`` is parsed first, then the prediction,
    and the comparison is ``verify(gold, pred)`` (it is not symmetric: gold may be a set of
    acceptable forms). Equivalences such as ``\\frac{1}{2}`` = ``0.5``, ``\\{1,2\\}`` =
    ``\\{2,1\\}`` or ``x=5`` = ``5`` are math-verify's. A response without a (closed, non-empty)
    boxed answer scores 0.0: the instruction asks for one.

    Raises ValueError when ``gold`` is empty or math-verify cannot parse it (a dataset problem,
    not a model one, so it must not silently become reward 0).
    """
    if not isinstance(response, str) or not isinstance(gold, str):
        raise ValueError(
            "grade_answer: response and gold must be str, got "
            f"{type(response).__name__} and {type(gold).__name__}"
        )
    if not gold.strip():
        raise ValueError("grade_answer: gold answer is empty; fix or drop this dataset row")
    limit = _internal_timeout()
    gold_parsed = parse(_as_boxed(gold), extraction_config=EXTRACTION_CONFIG, parsing_timeout=limit)
    if not gold_parsed:
        raise ValueError(
            f"grade_answer: math-verify could not parse the gold answer {gold!r}; "
            "write it as LaTeX (e.g. '\\frac{1}{2}') or drop this dataset row"
        )
    boxed = extract_boxed_answer(response)
    if boxed is None:
        return 0.0
    pred_parsed = parse(
        "\\boxed{" + boxed + "}", extraction_config=EXTRACTION_CONFIG, parsing_timeout=limit
    )
    if not pred_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=limit) else 0.0
