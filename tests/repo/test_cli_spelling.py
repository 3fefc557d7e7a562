"""One CLI spelling: every script takes ``--snake_case`` flags, the dashed form as an alias.

``scripts/train.py`` spells its flags as ``TrainConfig``'s fields (``--max_new_tokens``, dashes
accepted); ``scripts/evaluate.py`` and ``scripts/launch_sglang.py`` follow it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from evaluation_cli import load_cli

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _option_groups(path: Path) -> list[tuple[int, list[str]]]:
    groups = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):  # fmt: skip
            names = [a.value for a in node.args
                     if isinstance(a, ast.Constant) and str(a.value).startswith("--")]  # fmt: skip
            if names:
                groups.append((node.lineno, names))
    return groups


@pytest.mark.parametrize("script", ["evaluate.py", "launch_sglang.py"])
def test_every_flag_is_snake_case_first_with_a_dashed_alias(script: str) -> None:
    bad = []
    for line, names in _option_groups(SCRIPTS / script):
        first = names[0][2:]
        if "-" in first:
            bad.append(f"scripts/{script}:{line} {names[0]} (spell it --{first.replace('-', '_')})")
        if "_" in first and f"--{first.replace('_', '-')}" not in names:
            bad.append(f"scripts/{script}:{line} {names[0]} has no dashed alias")
    assert not bad, "\n".join(bad)


def test_evaluate_reads_both_spellings_alike() -> None:
    cli = load_cli()
    snake = cli.parse_args(["--max_new_tokens", "7", "--top_p", "0.5", "--sglang_url",
                            "http://a:1", "--skip_model_check", "--reward_timeout", "3"])
    dashed = cli.parse_args(["--max-new-tokens", "7", "--top-p", "0.5", "--sglang-url",
                             "http://a:1", "--skip-model-check", "--reward-timeout", "3"])
    assert vars(snake) == vars(dashed)
    assert (snake.max_new_tokens, snake.top_p, snake.sglang_url) == (7, 0.5, "http://a:1")
    assert cli.parse_args([]).top_k == -1  # defaults unchanged
