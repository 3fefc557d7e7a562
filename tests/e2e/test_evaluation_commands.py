"""The ``--rollout hf`` commands of docs/EVALUATION.md run as written (on the tiny policy and
the offline fixtures) through ``scripts/evaluate.py``; that every command is run by the test of
its tier is checked by ``tests/unit/evaluation/test_evaluation.py``."""

from __future__ import annotations

import pytest
from helpers.evaluation_cli import check_report, localize, readme_commands, run_evaluate


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv", [pytest.param(a, id=f"readme-{i}") for i, a in readme_commands("hf")]
)
def test_readme_hf_commands_run(argv: list[str], tiny_policy, tmp_path) -> None:
    local = localize(argv, tiny_policy, tmp_path / "results.json")
    done = run_evaluate(local)
    check_report(tmp_path / "results.json", local)
    assert "avg@2" in done.stdout and f"report: {tmp_path / 'results.json'}" in done.stdout

