"""Binary correctness reward: the response's last boxed answer checked against gold by math-verify.

This runs in-process; untrusted responses should reach it through
:class:`strace_ds.rewards.pool.RewardPool`, which adds a hard per-item timeout and resource
limits in worker processes. What happens to the response text: math-verify parses the boxed
LaTeX with its own parser (latex2sympy2, ANTLR-generated) into a sympy expression, and sympy
then simplifies and compares expressions. The numeric literals that parser lexes (digits and a
decimal point) become sympy numbers through ``sympify``, i.e. sympy's ``parse_expr``, which
tokenizes that sanitized literal and compiles and evaluates the generated code (``Integer (2 )``).
Raw response text is never handed to ``eval``/``exec``.

Two guards sit around math-verify for predictions (gold is trusted):

* relations: math-verify scores ``\\boxed{43 = 42}`` as 42 (it keeps the right-hand side of a
  relation when gold is not one). A relation in the prediction counts only when the gold is itself
  a relation, or when each left operand is a bare name (``x = 42``) or is itself equal to the gold
  (``x = 6 \\cdot 7 = 42``); see :mod:`strace_ds.rewards.relations`.
* no plain-expression fallback: when the boxed LaTeX does not parse, math-verify's expression
  extractor would take the last number anywhere in the text (``43 \\Rightarrow 42``,
  ``43 \\\\ 42`` -> 42). Predictions are parsed with the LaTeX extractor only.
"""

from __future__ import annotations

import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import And
from sympy.core.relational import Relational

from strace_ds.rewards.extract import extract_boxed_answer
from strace_ds.rewards.relations import find_relations

# Gold: boxed answers first (priority 0, math-verify's default is 50, after "final answer is"
# patterns), then plain expressions. The strings we hand to `parse` are always `\boxed{...}`,
# so the boxed pattern is the one that fires.
EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
PREDICTION_EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0),)
"""Predictions: LaTeX only (the expression fallback would pick any trailing number)."""

MATH_VERIFY_TIMEOUT_S = 5
"""math-verify's own (signal.alarm) limit for one parse or one comparison, in seconds."""

MAX_CHECKED_OPERANDS = 4
"""At most this many left operands that are not bare names are graded against the gold (each
costs a parse and a comparison); an answer with more relations of that kind scores 0."""


def _internal_timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works on the main thread; elsewhere
    # math-verify logs an error and fails every item. Off the main thread we disable them and rely
    # on the caller (RewardPool) for the hard timeout.
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    return None


def strip_trailing_punctuation(text: str) -> str:
    """Drop sentence punctuation and spacing that end a boxed answer: ``42.``, ``42,``,
    ``42\\,`` -> ``42``. An escaped character (``\\}``, ``\\\\``) is kept.

    Linear in the length of the text, whatever it holds (this runs on untrusted answers).
    """
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        if not end:
            return ""
        last, k = text[end - 1], end - 1
        while k > 0 and text[k - 1] == "\\":
            k -= 1
        escaped = (end - 1 - k) % 2 == 1  # an odd run of backslashes escapes `last`
        if escaped and last in ",;:! ":  # LaTeX spacing: \, \; \: \! (a `\ ` lost its space)
            end -= 2
        elif not escaped and last in "\\.,;":  # punctuation, or a `\ ` whose space went above
            end -= 1
        else:
            return text[:end]


def _gold_content(answer: str) -> str:
    """The gold as box content: its last ``\\boxed{}`` if it has one (a solution text), else
    the whole string without surrounding ``$``; trailing punctuation dropped."""
    inner = extract_boxed_answer(answer)
    if inner is None:
        inner = answer.strip().strip("$").strip()
    return strip_trailing_punctuation(inner)


def _is_relation(expr: Any) -> bool:
    if isinstance(expr, Relational):
        return True
    return isinstance(expr, And) and bool(expr.args) and all(_is_relation(a) for a in expr.args)


def _parse_prediction(content: str, limit: int | None) -> list[Any]:
    return parse(
        "\\boxed{" + content + "}",
        extraction_config=PREDICTION_EXTRACTION_CONFIG,
        parsing_timeout=limit,
    )


def _relations_allowed(content: str, gold_parsed: list[Any], limit: int | None) -> bool:
    """False when ``content`` holds a relation that may not stand for its right-hand side.

    Called only when the gold is not a relation. Order relations, ``\\neq`` and arrows never
    answer such a gold; an ``=``-like one does when its left operand is a bare name, or is
    itself equal to the gold.
    """
    relations = find_relations(content)
    if any(not r.is_equality for r in relations):
        return False
    to_check = [r.lhs for r in relations if not r.lhs_is_name]
    if len(to_check) > MAX_CHECKED_OPERANDS:
        return False
    for lhs in to_check:
        if not lhs:
            return False
        lhs_parsed = _parse_prediction(lhs, limit)
        if not lhs_parsed or not verify(gold_parsed, lhs_parsed, timeout_seconds=limit):
            return False
    return True


def grade_answer(response: str, gold: str) -> float:
    """1.0 if the last ``\\boxed{}`` of ``response`` equals ``gold`` mathematically, else 0.0.

    Following math-verify's documented order, ``gold`` is parsed first, then the prediction,
    and the comparison is ``verify(gold, pred)`` (it is not symmetric: gold may be a set of
    acceptable forms). Equivalences such as ``\\frac{1}{2}`` = ``0.5``, ``\\{1,2\\}`` =
    ``\\{2,1\\}`` or ``x=5`` = ``5`` are math-verify's. A response without a (closed, non-empty)
    boxed answer scores 0.0: the instruction asks for one. Trailing punctuation inside the box
    is ignored (``\\boxed{42.}``).

    A relation in the answer counts only if the gold is a relation too (then math-verify
    compares the relations), or if every left operand is a bare name or itself equals the
    gold: against gold 42, ``x = 42`` and ``x = 6 \\cdot 7 = 42`` score 1, while ``43 = 42``,
    ``1 + 1 = 42``, ``43 \\le 42`` and ``43 \\Rightarrow 42`` score 0.

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
    gold_content = _gold_content(gold)
    gold_parsed = parse(
        "\\boxed{" + gold_content + "}", extraction_config=EXTRACTION_CONFIG, parsing_timeout=limit
    )
    if not gold_parsed:
        raise ValueError(
            f"grade_answer: math-verify could not parse the gold answer {gold!r}; "
            "write it as LaTeX (e.g. '\\frac{1}{2}') or drop this dataset row"
        )
    boxed = extract_boxed_answer(response)
    if boxed is None:
        return 0.0
    boxed = strip_trailing_punctuation(boxed)
    if not boxed:
        return 0.0
    pred_parsed = _parse_prediction(boxed, limit)
    if not pred_parsed:
        return 0.0
    gold_is_relation = bool(find_relations(gold_content)) or any(
        _is_relation(g) for g in gold_parsed
    )
    if not gold_is_relation and not _relations_allowed(boxed, gold_parsed, limit):
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=limit) else 0.0
