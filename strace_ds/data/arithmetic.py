"""The synthetic verifiable task: short templated arithmetic word problems.

Every problem is drawn from a seeded generator, graded by an exact integer answer and comes
with a one-line reference solution used for the supervised warm start of the tiny policy
(:mod:`strace_ds.assets.recipes.arithmetic`)::

    Tom has 3 apples and buys 5 more. How many apples does he have now?
    -> "3 + 5 = 8. The answer is \\boxed{8}."

Prompt format, used everywhere (SFT, rollouts, evaluation): the user message is the
question followed by :data:`INSTRUCTION`, i.e. ``question + "\\nPut your final answer within
\\boxed{}."``, and the chat template turns it into
``<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n``; the answer ends with
``<|im_end|>``. :func:`arithmetic_dataset` stores the full user message (instruction
included) in :attr:`PromptExample.prompt`, so callers only apply the chat template.

Train/test split: a problem belongs to ``test`` when a hash of its exact question text
falls in the lowest ``test_fraction`` of buckets, independently of the seed. So no test
question ever appears in any train set, whatever seeds the two were drawn with. What is
held out is the problem, not the arithmetic facts: ``7 * 8`` occurs in both splits with
other names and wording, as it does in real benchmarks.

Difficulty is set by :class:`ArithmeticConfig` (number ranges and which problem kinds,
including two-step ones, are drawn with which weights).
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from strace_ds.data.types import PromptDataset, PromptExample

INSTRUCTION = "\nPut your final answer within \\boxed{}."
"""Appended to every question to form the user message (the Qwen-style math instruction)."""

SPLITS = ("train", "test")

_NAMES = (
    ("Tom", "he"),
    ("Anna", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Sam", "he"),
    ("Lily", "she"),
    ("Max", "he"),
    ("Emma", "she"),
)
_FRIENDS = ("Leo", "Zoe", "Jack", "Ella")
_ITEMS = ("apples", "pens", "books", "coins", "cards", "marbles", "stickers", "cookies")

# One entry per problem kind: (question templates, number of operands).
# Placeholders: {name} {pro} {friend} {items} and the operands {a} {b} {c}.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "{name} has {a} {items} and buys {b} more. How many {items} does {pro} have now?",
        "There are {a} {items} in a box. {name} puts in {b} more. "
        "How many {items} are in the box now?",
    ),
    "sub": (
        "{name} has {a} {items} and gives {b} to {friend}. How many {items} does {name} have left?",
        "There are {a} {items} on the table. {name} takes {b} of them. "
        "How many {items} are left on the table?",
    ),
    "mul": (
        "{name} buys {a} bags with {b} {items} in each bag. How many {items} does {pro} buy?",
        "There are {a} boxes. Each box holds {b} {items}. How many {items} are there in all?",
    ),
    "add_sub": (
        "{name} has {a} {items}, buys {b} more and then gives {c} to {friend}. "
        "How many {items} does {name} have now?",
    ),
    "mul_add": (
        "{name} has {c} {items} and buys {a} bags with {b} {items} in each bag. "
        "How many {items} does {pro} have now?",
    ),
}
KINDS = tuple(_TEMPLATES)
STEPS: dict[str, tuple[str, ...]] = {
    "add": ("+",),
    "sub": ("-",),
    "mul": ("*",),
    "add_sub": ("+", "-"),
    "mul_add": ("*", "+"),
}
"""The operators applied, in order, to the running value starting from the first operand."""
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
"""Operator symbol -> function, shared by the arithmetic and the chain task."""


@dataclass(frozen=True)
class ArithmeticConfig:
    """How hard the problems are: number ranges, kinds and the test share."""

    max_add: int = 20
    """Addends are drawn from ``1..max_add``."""
    max_sub: int = 30
    """Minuends are drawn from ``2..max_sub`` and subtrahends from ``1..minuend``."""
    max_mul: int = 9
    """Factors are drawn from ``2..max_mul``."""
    kinds: tuple[str, ...] = KINDS
    """Problem kinds to draw from (a subset of ``KINDS``); two-step ones are the hardest."""
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """Relative draw weight of each entry of ``kinds``."""
    test_fraction: float = 0.2
    """Share of the question space assigned to ``test`` by the text hash."""

    def __post_init__(self) -> None:
        if self.max_add < 1:
            raise ValueError(f"ArithmeticConfig.max_add must be >= 1, got {self.max_add}")
        if self.max_sub < 2:
            raise ValueError(f"ArithmeticConfig.max_sub must be >= 2, got {self.max_sub}")
        if self.max_mul < 2:
            raise ValueError(f"ArithmeticConfig.max_mul must be >= 2, got {self.max_mul}")
        unknown = [k for k in self.kinds if k not in _TEMPLATES]
        if unknown or not self.kinds:
            raise ValueError(
                f"ArithmeticConfig.kinds must be a non-empty subset of {KINDS}, got {self.kinds}"
            )
        if len(self.weights) != len(self.kinds) or any(w < 0 for w in self.weights):
            raise ValueError(
                "ArithmeticConfig.weights needs one non-negative weight per kind "
                f"({len(self.kinds)}), got {self.weights}"
            )
        if sum(self.weights) <= 0:
            raise ValueError("ArithmeticConfig.weights must not all be zero")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"ArithmeticConfig.test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def to_dict(self) -> dict:
        """Plain JSON-able form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ArithmeticConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def solve(kind: str, operands: list[int], slips: tuple[int, ...] | None = None) -> tuple[int, str]:
    """Return ``(answer, reference solution)`` for a problem of ``kind`` with ``operands``.

    The solution is one short equation per step, each on the running value, and ends with
    ``\\boxed{answer}``: ``"13 + 20 = 33. 33 - 7 = 26. The answer is \\boxed{26}."``.
    ``slips`` (one integer per step, default none) is added to each step's result to write
    a plausible *wrong* solution whose later steps stay consistent with the slip; the
    tiny policy's warm start uses it as a noisy teacher
    (:mod:`strace_ds.assets.recipes.arithmetic`).
    """
    if kind not in STEPS:
        raise ValueError(f"solve: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    ops = STEPS[kind]
    slips = slips if slips is not None else (0,) * len(ops)
    if len(operands) != len(ops) + 1 or len(slips) != len(ops):
        raise ValueError(
            f"solve: kind {kind!r} needs {len(ops) + 1} operands and {len(ops)} slips, "
            f"got {len(operands)} and {len(slips)}"
        )
    value, lines = operands[0], []
    for op, rhs, slip in zip(ops, operands[1:], slips):
        result = APPLY[op](value, rhs) + slip
        lines.append(f"{value} {op} {rhs} = {result}.")
        value = result
    lines.append(f"The answer is \\boxed{{{value}}}.")
    return value, " ".join(lines)


def _draw_operands(kind: str, cfg: ArithmeticConfig, rng: random.Random) -> list[int]:
    """Operands for one problem; subtractions never go negative."""
    draws: dict[str, Callable[[], list[int]]] = {
        "add": lambda: [rng.randint(1, cfg.max_add), rng.randint(1, cfg.max_add)],
        "sub": lambda: _sub_pair(cfg.max_sub, rng),
        "mul": lambda: [rng.randint(2, cfg.max_mul), rng.randint(2, cfg.max_mul)],
        "add_sub": lambda: _add_sub_triple(cfg.max_add, rng),
        "mul_add": lambda: [
            rng.randint(2, cfg.max_mul),
            rng.randint(2, cfg.max_mul),
            rng.randint(1, cfg.max_add),
        ],
    }
    return draws[kind]()


def _sub_pair(max_sub: int, rng: random.Random) -> list[int]:
    a = rng.randint(2, max_sub)
    return [a, rng.randint(1, a)]


def _add_sub_triple(max_add: int, rng: random.Random) -> list[int]:
    a, b = rng.randint(1, max_add), rng.randint(1, max_add)
    return [a, b, rng.randint(1, a + b)]


def split_of(question: str, test_fraction: float = 0.2) -> str:
    """``"test"`` or ``"train"`` for a question text, by a seed-independent SHA-1 bucket."""
    bucket = int.from_bytes(hashlib.sha1(question.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def draw_problem(cfg: ArithmeticConfig, rng: random.Random) -> PromptExample:
    """One problem of either split (the caller filters by :func:`split_of`)."""
    kind = rng.choices(cfg.kinds, weights=cfg.weights)[0]
    templates = _TEMPLATES[kind]
    t = rng.randrange(len(templates))
    name, pro = rng.choice(_NAMES)
    friend, items = rng.choice(_FRIENDS), rng.choice(_ITEMS)
    ops = _draw_operands(kind, cfg, rng)
    fields = dict(zip("abc", ops))
    question = templates[t].format(name=name, pro=pro, friend=friend, items=items, **fields)
    answer, solution = solve(kind, ops)
    meta = {
        "kind": kind,
        "template": t,
        "operands": ops,
        "solution": solution,
        "question": question,
    }
    return PromptExample(prompt=question + INSTRUCTION, answer=str(answer), meta=meta)


def arithmetic_dataset(
    split: str = "train", size: int = 2000, seed: int = 0, config: ArithmeticConfig | None = None
) -> PromptDataset:
    """``size`` problems of ``split`` (``"train"`` or ``"test"``), deterministic in ``seed``.

    Each example has ``prompt`` = question + :data:`INSTRUCTION`, ``answer`` = the gold
    integer as a string, and ``meta`` with ``solution`` (the SFT target, ending in
    ``\\boxed{answer}``), ``kind``, ``template``, ``operands``, ``question`` and ``split``.
    Problems may repeat inside a split when the question space is small; never across splits.
    """
    cfg = config if config is not None else ArithmeticConfig()
    # The split seeds its own stream so train and test of one seed are not shifted copies.
    rng = random.Random(f"strace_ds.synthetic/{split}/{seed}")
    return draw_split(
        lambda: draw_problem(cfg, rng),
        split,
        size,
        cfg.test_fraction,
        "synthetic",
        "ArithmeticConfig.test_fraction or the number ranges",
    )


def draw_split(
    draw: Callable[[], PromptExample], split: str, size: int, test_fraction: float, task: str,
    knobs: str,
) -> PromptDataset:  # fmt: skip
    """``size`` problems from ``draw()`` whose question (``meta["question"]``) hashes into
    ``split``; source ``<task>:<split>``. Raises naming ``knobs`` after ``1000 * size`` draws."""
    if split not in SPLITS:
        raise ValueError(f"{task}: split must be one of {SPLITS}, got {split!r}")
    if size < 1:
        raise ValueError(f"{task}: size must be >= 1, got {size}")
    examples: list[PromptExample] = []
    max_draws = 1000 * size
    for _ in range(max_draws):
        ex = draw()
        if split_of(ex.meta["question"], test_fraction) == split:
            ex.meta["split"] = split
            examples.append(ex)
            if len(examples) == size:
                return PromptDataset(examples=examples, source=f"{task}:{split}")
    raise ValueError(
        f"{task}: drew {max_draws} problems without finding {size} for split {split!r}; "
        f"raise {knobs}"
    )
