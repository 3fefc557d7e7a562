"""Named rewards and the ``--reward`` spec: which functions score a response, with what weights.

Every reward has one signature::

    fn(response: str, gold: str, example: dict[str, Any]) -> float

A user function may instead have TRL's shape, ``fn(prompts, completions, **columns) ->
list[float]`` (detected by a parameter named ``completions``; see :class:`TrlReward`).

``response`` is the full decoded model output (untrusted: call
:func:`strace_ds.rewards.extract_boxed_answer` for its final answer), ``gold`` the dataset's gold
answer and ``example`` the dataset row's other columns (``{}`` when the caller has none). The
return value must be a finite real number; anything else counts as an error and scores 0.

Rewards run in :class:`strace_ds.rewards.RewardPool`'s worker processes, each call under the
pool's hard timeout. A user function is named ``package.module:function``; it is found by
:func:`importlib.import_module` and :func:`getattr` (never ``eval``), in the main process when
the pool is built (so a typo is a start-up error) and again in every worker, where the function
arrives pickled by reference. So it must be defined with ``def`` at module level in a module the
workers can import: installed, or on ``PYTHONPATH`` (spawned workers inherit ``sys.path``).

Spec grammar (``--reward``)::

    spec   := term ("," term)*
    term   := name [":" weight]
    name   := registered name            e.g. math_verify, format, synthetic
            | module ":" function        e.g. my_pkg.rewards:length_penalty
            | URL                        e.g. http://127.0.0.1:8000/score (remote.py)
    weight := a decimal number           e.g. 0.5, -1, 1e-3 (not inf or nan)

A term's last colon-separated part is its weight when it is a number, so
``my_pkg.rewards:length_penalty:0.5`` is that function at weight 0.5 and ``math_verify`` is
math-verify at weight 1. The reward of a response is ``sum_k weight_k * reward_k``; each term is
also reported on its own under its label (the registered name, or the function's name).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from strace_ds.rewards.extract import extract_boxed_answer
from strace_ds.rewards.grading import grade_answer
from strace_ds.rewards.remote import RemoteReward, check_url, is_remote

RewardFn = Callable[[str, str, dict[str, Any]], float]
"""``fn(response, gold, example) -> float``: the one signature of every reward."""

DEFAULT_SPEC = "math_verify"
"""What the trainer grades with unless told otherwise: math-verify correctness alone."""

MAX_ABS_WEIGHT = 1e6
"""A term's weight must be within ``|w| <= MAX_ABS_WEIGHT`` (with rewards bounded by
``worker.MAX_ABS_REWARD``, every weighted sum stays far inside float32)."""

SPEC_FIELD = "--reward"
"""The option that error messages name."""

_WEIGHT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def math_verify_reward(response: str, gold: str, example: dict[str, Any]) -> float:
    """1.0 when the last ``\\boxed{}`` of ``response`` equals ``gold`` by math-verify, else 0.0
    (:func:`strace_ds.rewards.grade_answer`; an unparseable gold raises)."""
    return grade_answer(response, gold)


def format_reward(response: str, gold: str, example: dict[str, Any]) -> float:
    """1.0 when ``response`` ends its reasoning with a closed, non-empty ``\\boxed{}`` answer
    (:func:`strace_ds.rewards.extract_boxed_answer` finds one), else 0.0; ``gold`` is unused."""
    return 0.0 if extract_boxed_answer(response) is None else 1.0


REWARDS: dict[str, RewardFn] = {
    "math_verify": math_verify_reward,
    "format": format_reward,
    # The synthetic task's golds are integers graded by math-verify (strace_ds.data.arithmetic):
    # the same function, under the name a run on that task is likely to ask for.
    "synthetic": math_verify_reward,
}
"""The registered rewards, by name."""


@dataclass(frozen=True)
class RewardTerm:
    """One term of a reward spec: a reward name and its weight in the sum."""

    name: str
    """A key of :data:`REWARDS`, or ``package.module:function``."""
    weight: float = 1.0
    """Multiplies this reward in the total (0 reports it without counting it)."""

    @property
    def label(self) -> str:
        """The name the term is reported under (``reward/<label>``): the registered name, the
        function's name without its module, or a URL's last path segment."""
        if is_remote(self.name):  # the URL's last path segment: .../score -> score
            return urlsplit(self.name).path.rstrip("/").rpartition("/")[2] or "remote"
        return self.name.rpartition(":")[2].rpartition(".")[2]


VERIFIERS = ("math_verify", "synthetic")
"""Registered rewards whose value is math-verify's verdict: ``reward/accuracy`` is theirs."""


def with_verifier(spec: str) -> str:
    """``spec`` with ``math_verify:0`` appended when no term is math-verify's verdict, so that
    ``reward/accuracy`` stays math-verify's whatever the reward trains on (weight 0: reported,
    not counted). A spec that does not parse is returned as it is (its error comes later)."""
    try:
        terms = parse_reward_spec(spec)
    except ValueError:
        return spec
    if any(t.name in VERIFIERS for t in terms):
        return spec
    return f"{spec},math_verify:0"


def _spec_error(spec: str, message: str) -> ValueError:
    return ValueError(f"{SPEC_FIELD} {spec!r}: {message}")


def _parse_term(term: str, spec: str) -> RewardTerm:
    name, weight = term, 1.0
    head, sep, tail = term.rpartition(":")
    if sep and _WEIGHT.fullmatch(tail.strip()):
        name, weight = head.strip(), float(tail)
    if not math.isfinite(weight):  # a literal like 1e999
        raise _spec_error(spec, f"the weight of {name!r} is not finite; use e.g. 0.5")
    if abs(weight) > MAX_ABS_WEIGHT:
        raise _spec_error(
            spec, f"the weight of {name!r} is beyond |w| <= {MAX_ABS_WEIGHT:g}; use e.g. 0.5"
        )
    if name in REWARDS:
        return RewardTerm(name, weight)
    if is_remote(name):
        problem = check_url(name)
        if problem:
            raise _spec_error(spec, f"{name!r}: {problem}")
        return RewardTerm(name, weight)
    module, sep, attr = name.partition(":")
    if not sep:
        raise _spec_error(
            spec,
            f"unknown reward {name!r}; choose one of {', '.join(sorted(REWARDS))} or name an "
            "importable function as 'package.module:function'",
        )
    bad = [part for part in (module, attr) if not _IDENTIFIER_PATH.fullmatch(part)]
    if bad:
        raise _spec_error(
            spec,
            f"{name!r} is not 'package.module:function' ({bad[0]!r} is not a dotted Python "
            "name); a weight is a number and goes last, as in 'my_pkg.rewards:length_penalty:0.5'",
        )
    return RewardTerm(name, weight)


def parse_reward_spec(spec: str) -> list[RewardTerm]:
    """Parse ``"math_verify,format:0.1,my_pkg.rewards:length_penalty:-0.5"`` into terms.

    Checks the syntax and the registered names only; :func:`load_reward` imports functions.
    Raises ValueError naming ``--reward`` and the fix for an empty spec or term, an unknown
    name, a malformed ``module:function``, two terms with the same label, or all weights 0.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"{SPEC_FIELD} must be a string such as 'math_verify,format:0.1', "
            f"got {type(spec).__name__}"
        )
    if not spec.strip():
        raise _spec_error(spec, f"no reward given; use e.g. {DEFAULT_SPEC!r}")
    terms: list[RewardTerm] = []
    for raw in spec.split(","):
        term = raw.strip()
        if not term:
            raise _spec_error(spec, "empty term (two commas in a row, or a trailing comma)")
        terms.append(_parse_term(term, spec))
    labels = [t.label for t in terms]
    for label in labels:
        if labels.count(label) > 1:
            clash = [t.name for t in terms if t.label == label]
            raise _spec_error(
                spec,
                f"{' and '.join(clash)} are both reported as 'reward/{label}'; give each "
                "reward once (rename one of the functions if two modules share a name)",
            )
    if all(t.weight == 0 for t in terms):
        raise _spec_error(spec, "every weight is 0, so the reward would be constant")
    return terms


def _load_error(name: str, message: str) -> ValueError:
    return ValueError(f"{SPEC_FIELD}: reward {name!r} cannot be used: {message}")


def load_reward(name: str) -> RewardFn:
    """The function a term names: a registered one, or ``package.module:function`` imported.

    Raises ValueError naming ``--reward``, the function and the fix when the module does not
    import, the attribute is missing or not callable, it cannot take ``(response, gold,
    example)``, or it cannot be sent to a worker (pickled by reference).
    """
    if name in REWARDS:
        return REWARDS[name]
    if is_remote(name):
        return RemoteReward(name)  # reached by the pool (a start-up probe), not here
    module_name, sep, attr = name.partition(":")
    if not sep:
        registered = ", ".join(sorted(REWARDS))
        raise _load_error(name, f"neither registered ({registered}) nor 'module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise _load_error(
            name,
            f"module {module_name!r} does not import ({type(exc).__name__}: {exc}); install it "
            "or put its directory on PYTHONPATH",
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _load_error(
                name,
                f"{getattr(obj, '__name__', module_name)!r} has no attribute {part!r} (a "
                "weight must be a number, as in 'math_verify:0.5')",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise _load_error(name, f"it is a {type(obj).__name__}, not a function")
    if not is_trl_shaped(obj):
        _check_signature(name, obj)
    try:
        pickle.dumps(obj)
    except Exception as exc:  # a lambda, a closure, a function defined inside another
        raise _load_error(
            name,
            f"it cannot be sent to the grading workers ({type(exc).__name__}: {exc}); define "
            "it with def at the top level of its module",
        ) from exc
    return TrlReward(obj) if is_trl_shaped(obj) else obj


class TrlReward:
    """A reward function in TRL's shape, ``fn(prompts, completions, **columns) -> list[float]``,
    called as a reward of the pool's shape for one answer at a time (so each answer keeps its
    own timeout): ``fn(prompts=[prompt], completions=[response], answer=[gold],
    <column>=[value], ...)``, the dataset row's columns as one-element lists by keyword, like
    TRL. A function without ``**kwargs`` gets only the keywords it names. Its one value is the
    reward; ``None`` (TRL's "does not apply") scores 0. Pickles by reference to ``fn``."""

    wants_prompt = True
    """The pool passes the prompt text (``prompt=``) to rewards that say so."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        params = inspect.signature(fn).parameters.values()
        self._names = (
            None if any(p.kind is p.VAR_KEYWORD for p in params) else {p.name for p in params}
        )

    def __call__(
        self, response: str, gold: str, example: dict[str, Any], prompt: str = ""
    ) -> float:
        columns = {"answer": gold, **example}
        kwargs: dict[str, Any] = {k: [v] for k, v in columns.items()}
        kwargs.update(prompts=[prompt], completions=[response])
        if self._names is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._names}
        values = self.fn(**kwargs)
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(
                f"a TRL-style reward returned {type(values).__name__}; return a list of floats, "
                "one per completion"
            )
        if len(values) != 1:
            raise ValueError(
                f"a TRL-style reward returned {len(values)} values for 1 completion; return "
                "one float per completion"
            )
        value = values[0]
        return 0.0 if value is None else value


def is_trl_shaped(fn: Any) -> bool:
    """True when ``fn`` takes TRL's reward arguments (a parameter named ``completions``)
    rather than ``(response, gold, example)``."""
    try:
        return "completions" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _check_signature(name: str, fn: Any) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: the workers will tell
        return
    try:
        signature.bind("response", "gold", {})
    except TypeError as exc:
        raise _load_error(
            name, f"its signature {signature} cannot take (response, gold, example): {exc}"
        ) from exc


def load_rewards(spec: str | list[RewardTerm]) -> list[tuple[RewardTerm, RewardFn]]:
    """Parse ``spec`` (unless already parsed) and load every term's function."""
    terms = parse_reward_spec(spec) if isinstance(spec, str) else list(spec)
    return [(term, load_reward(term.name)) for term in terms]
