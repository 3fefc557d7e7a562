"""The chain task: long answers that hinge on a few decisions (the credit-assignment study).

A problem is a chain of ``decisive`` arithmetic operations on a running value; the answer
writes every intermediate result out and, after each, ``filler`` restating lines worded in one
of ``phrasings`` interchangeable ways::

    Start with 7. Add 5, then multiply by 3, then subtract 4. What is the final value?
    -> "7 + 5 = 12. So we have 12. Now the value is 12. 12 * 3 = 36. So we have 36. ...
        The answer is \\boxed{32}."

What decides the reward: the result digits of the ``decisive`` equations (one wrong digit and
every later line, consistent with it, ends in a wrong box). What does not: everything else,
i.e. the copied operands, the restatements and the choice of wording, which is free (any
phrasing is right) and so carries entropy without carrying credit. A 3-operation chain with two
filler lines per step is ~90 answer tokens, of which ~6 decide the reward; ``filler`` and
``decisive`` move the length through 40-200 tokens.

The warm start (:mod:`strace_ds.assets.recipes.chain`) learns it from a teacher that slips at each
decisive result with probability ``slip_rate`` (later lines stay consistent with the slip), so
the policy starts unsure exactly at the decisions, as a base model is unsure at the few forks
of a reasoning trace that matter.

Names and splits follow :mod:`strace_ds.data.arithmetic`: prompts end with its
:data:`~strace_ds.data.arithmetic.INSTRUCTION`, golds are integers graded through ``\\boxed{}``
and math-verify, and a question is ``test`` when its text hash falls in the lowest
``test_fraction`` of buckets, whatever the seed. ``chain_dataset`` takes a
:class:`ChainConfig`; the trainer's ``--dataset chain`` or ``chain:decisive=4,filler=1``
(:func:`parse_chain_spec`) builds one from a spec string.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

from strace_ds.data.arithmetic import APPLY, INSTRUCTION, draw_split
from strace_ds.data.types import PromptDataset, PromptExample

_VERBS = {"+": "add {b}", "-": "subtract {b}", "*": "multiply by {b}"}
_PHRASINGS = (
    "So we have {v}.",
    "Now the value is {v}.",
    "That makes {v}.",
    "We keep {v}.",
    "The running value is {v}.",
)


@dataclass(frozen=True)
class ChainConfig:
    """The task's knobs: decisions per answer, filler per decision, numbers, teacher slips."""

    decisive: int = 3
    """Arithmetic operations in the chain: the results that decide the reward."""
    filler: int = 2
    """Restating lines written after each operation (0 = terse answers)."""
    phrasings: int = 3
    """Interchangeable wordings of a filler line (1 = filler is deterministic); each line
    picks one at random, a fork of the answer that changes no reward."""
    max_value: int = 30
    """Running values stay in ``0..max_value``."""
    max_operand: int = 9
    """Addends and subtrahends are drawn from ``1..max_operand``."""
    max_factor: int = 3
    """Factors are drawn from ``2..max_factor`` (0 or 1: no multiplications)."""
    slip_rate: float = 0.3
    """Warm-start teacher only: probability that a decisive result is off by 1 or 2."""
    test_fraction: float = 0.2
    """Share of the question space assigned to ``test`` by the text hash."""

    def __post_init__(self) -> None:
        if not 1 <= self.decisive <= 12:
            raise ValueError(f"ChainConfig.decisive must be in 1..12, got {self.decisive}")
        if not 0 <= self.filler <= 8:
            raise ValueError(f"ChainConfig.filler must be in 0..8, got {self.filler}")
        if not 1 <= self.phrasings <= len(_PHRASINGS):
            raise ValueError(
                f"ChainConfig.phrasings must be in 1..{len(_PHRASINGS)}, got {self.phrasings}"
            )
        if self.max_value < 10:
            raise ValueError(f"ChainConfig.max_value must be >= 10, got {self.max_value}")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError(
                f"ChainConfig.max_operand must be in 1..max_value, got {self.max_operand}"
            )
        if not 0 <= self.max_factor <= 9:
            raise ValueError(f"ChainConfig.max_factor must be in 0..9, got {self.max_factor}")
        if not 0.0 <= self.slip_rate < 1.0:
            raise ValueError(f"ChainConfig.slip_rate must be in [0, 1), got {self.slip_rate}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"ChainConfig.test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChainConfig:
        return cls(**d)


def parse_chain_spec(spec: str) -> ChainConfig:
    """``"chain"`` -> defaults; ``"chain:decisive=4,filler=1"`` -> those fields overridden.

    Raises ``ValueError`` naming the bad key or value and the valid keys.
    """
    name, _, rest = spec.partition(":")
    if name != "chain":
        raise ValueError(f"parse_chain_spec: expected 'chain[:key=value,...]', got {spec!r}")
    types = {f.name: f.type for f in fields(ChainConfig)}
    kwargs: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise ValueError(
                f"dataset {spec!r}: {item!r} is not key=value with a key among {', '.join(types)}"
            )
        try:
            kwargs[key] = float(value) if types[key] == "float" else int(value)
        except ValueError:
            raise ValueError(f"dataset {spec!r}: {key}={value!r} is not a {types[key]}") from None
    return ChainConfig(**kwargs)


def _draw_ops(cfg: ChainConfig, rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """A start value and ``decisive`` operations keeping the value in ``0..max_value``."""
    value = rng.randint(1, cfg.max_operand)
    start, ops = value, []
    for _ in range(cfg.decisive):
        allowed = []
        if value + 1 <= cfg.max_value:
            allowed.append("+")
        if value >= 1:
            allowed.append("-")
        if cfg.max_factor >= 2 and 2 <= value <= cfg.max_value // 2:
            allowed.append("*")
        op = rng.choice(allowed)
        if op == "+":
            b = rng.randint(1, min(cfg.max_operand, cfg.max_value - value))
        elif op == "-":
            b = rng.randint(1, min(cfg.max_operand, value))
        else:
            b = rng.randint(2, min(cfg.max_factor, cfg.max_value // value))
        ops.append((op, b))
        value = APPLY[op](value, b)
    return start, ops


def chain_question(start: int, ops: list[tuple[str, int]]) -> str:
    """``"Start with 7. Add 5, then multiply by 3. What is the final value?"``."""
    steps = ", then ".join(_VERBS[op].format(b=b) for op, b in ops)
    return f"Start with {start}. {steps[0].upper()}{steps[1:]}. What is the final value?"


def chain_solution(
    start: int,
    ops: list[tuple[str, int]],
    cfg: ChainConfig,
    rng: random.Random | None = None,
    slips: list[int] | None = None,
) -> tuple[int, str]:
    """``(final value, written solution)``.

    Filler lines take phrasings from ``rng`` (the first phrasing when None). ``slips`` (one
    integer per operation, default none) is added to each result; later lines stay consistent.
    """
    slips = slips if slips is not None else [0] * len(ops)
    value, parts = start, []
    for (op, b), slip in zip(ops, slips):
        result = APPLY[op](value, b) + slip
        parts.append(f"{value} {op} {b} = {result}.")
        for _ in range(cfg.filler):
            k = rng.randrange(cfg.phrasings) if rng is not None else 0
            parts.append(_PHRASINGS[k].format(v=result))
        value = result
    parts.append(f"The answer is \\boxed{{{value}}}.")
    return value, " ".join(parts)


def teacher_slips(n_ops: int, slip_rate: float, rng: random.Random) -> list[int]:
    """The warm-start teacher's error per operation: 0, or +-1 / +-2 with ``slip_rate``."""
    return [rng.choice((-2, -1, 1, 2)) if rng.random() < slip_rate else 0 for _ in range(n_ops)]


def draw_chain_problem(cfg: ChainConfig, rng: random.Random) -> PromptExample:
    """One problem of either split (the caller filters by ``split_of``)."""
    start, ops = _draw_ops(cfg, rng)
    question = chain_question(start, ops)
    answer, solution = chain_solution(start, ops, cfg, random.Random(question))
    meta = {"kind": "chain", "start": start, "ops": [list(o) for o in ops],
            "solution": solution, "question": question}  # fmt: skip
    return PromptExample(prompt=question + INSTRUCTION, answer=str(answer), meta=meta)


def chain_dataset(
    split: str = "train", size: int = 2000, seed: int = 0, config: ChainConfig | None = None
) -> PromptDataset:
    """``size`` chain problems of ``split``, deterministic in ``seed`` and ``config``.

    ``meta`` holds ``solution`` (one correct answer, phrasings drawn per question), ``start``,
    ``ops`` (``[op, operand]`` pairs), ``question`` and ``split``. Problems may repeat inside a
    split; never across splits.
    """
    cfg = config if config is not None else ChainConfig()
    rng = random.Random(f"strace_ds.chain/{split}/{seed}")
    return draw_split(
        lambda: draw_chain_problem(cfg, rng),
        split,
        size,
        cfg.test_fraction,
        "chain",
        "ChainConfig.max_value, max_operand or decisive",
    )
