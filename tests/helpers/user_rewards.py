"""User reward functions for ``tests/unit/rewards/test_reward_registry.py``, named in specs as
``user_rewards:<function>``.

They stand for a user's own module: defined at module level so that the grading workers import
them by name (pyproject's pytest ``pythonpath`` puts ``tests/helpers`` on ``sys.path``, and
spawned workers inherit it; a test that starts ``scripts/train.py`` puts it on ``PYTHONPATH``).
Kept free of heavy imports, since every worker imports this module.
"""

from __future__ import annotations

import time
from typing import Any

NOT_A_FUNCTION = 3
"""Named as a reward, it is a start-up error: not callable."""


def bonus(response: str, gold: str, example: dict[str, Any]) -> float:
    """The row's ``bonus`` column (0 without one); misbehaves on responses starting with a
    marker: ``HANG`` never returns, ``RAISE`` raises, ``NAN`` and ``STR`` return what no
    reward may (a non-finite number, a string)."""
    if response.startswith("HANG"):
        while True:  # a reward that never finishes
            time.sleep(60)
    if response.startswith("RAISE"):
        raise ValueError("bonus: no bonus for you")
    if response.startswith("NAN"):
        return float("nan")
    if response.startswith("STR"):
        return "1.0"  # type: ignore[return-value]
    return float(example.get("bonus", 0.0))


def length_penalty(response: str, gold: str, example: dict[str, Any]) -> float:
    """Minus the response's length in units of 100 characters."""
    return -len(response) / 100


def two_arguments(response: str, gold: str) -> float:
    """The old ``grader`` signature: rejected at start-up (a reward also takes ``example``)."""
    return 1.0


lambda_reward = lambda response, gold, example: 1.0  # noqa: E731  (cannot be pickled by name)


def echo_number(response: str, gold: str, example: dict[str, Any]) -> float:
    """The response read as a number (``1e300``, ``3e38``, ``inf``); an integer literal stays an
    int (``10**400`` is one float() refuses)."""
    text = response.strip()
    return int(text) if text.lstrip("-").isdigit() else float(text)


def spawn_and_hang(response: str, gold: str, example: dict[str, Any]) -> float:
    """Starts ``sleep 60``, writes ``<its pid> <its process group>`` to ``example["pidfile"]``,
    then never returns: what the pool's timeout must kill, child included."""
    import os
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    with open(example["pidfile"], "w") as f:
        f.write(f"{child.pid} {os.getpgid(child.pid)}")
    while True:
        time.sleep(60)


def tamper_with_grading(response: str, gold: str, example: dict[str, Any]) -> float:
    """Rewires math-verify's verdict in its own process to "always correct" (a global-state
    change by a user reward): it must not reach the worker that grades math_verify."""
    import strace_ds.rewards.grading as grading
    import strace_ds.rewards.registry as registry

    grading.grade_answer = registry.grade_answer = lambda response, gold: 1.0
    return 0.0


def chatty(response: str, gold: str, example: dict[str, Any]) -> float:
    """Prints 2 MB per call, half on stdout and half on stderr, the second half through a
    subprocess (output the worker's Python objects never see)."""
    import subprocess
    import sys

    print("o" * 1_000_000)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('e' * 1_000_000)"],
                   check=False)
    return 1.0


def trl_contains_answer(prompts, completions, answer, **kwargs):  # noqa: ANN001, ANN201
    """A reward exactly as TRL users write one: 1.0 where the completion contains the row's
    ``answer`` and the prompt is a question, plus the row's ``bonus`` column when present."""
    bonus = kwargs.get("bonus", [0.0] * len(completions))
    return [float(a in c and p.endswith("?")) + b
            for p, c, a, b in zip(prompts, completions, answer, bonus, strict=True)]


def trl_named_only(completions, bonus):  # noqa: ANN001, ANN201
    """TRL's shape without ``**kwargs``: gets only the columns it names."""
    return [len(c) / 100 + b for c, b in zip(completions, bonus, strict=True)]


def trl_two_values(completions, **kwargs):  # noqa: ANN001, ANN003, ANN201
    """Returns two values for one completion: an error."""
    return [1.0, 2.0]
