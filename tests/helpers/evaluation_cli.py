"""``scripts/evaluate.py`` for tests: the module itself, the commands of ``docs/EVALUATION.md``, and
those commands rewritten to run locally in seconds (a subprocess, as a user runs them).

Each of those commands is run by a test of its tier: ``--rollout hf`` (the default) ones by
``tests/e2e/test_evaluation_commands.py``, ``--rollout sglang`` ones against a real CPU server by
``tests/sglang/test_sglang_server_real.py``; ``test_readme_evaluation_commands_are_all_tested``
(``tests/unit/evaluation/test_evaluation.py``) checks that the two cover the whole code block.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "evaluate.py"
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"

LOCAL_FLAGS = {"--k": "2", "--limit": "2", "--max-new-tokens": "24"}
"""What every local run overrides or adds: a smoke-sized run of the same command."""


def load_cli() -> ModuleType:
    """``scripts/evaluate.py`` as a module (``parse_args``, ``build_engine``, ``main``)."""
    spec = importlib.util.spec_from_file_location("strace_ds_evaluate_cli", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_evaluation_commands() -> list[list[str]]:
    """Every command of the first code block of ``docs/EVALUATION.md`` (the page the README
    links for evaluation), as argv after the script."""
    text = (REPO / "docs" / "EVALUATION.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "docs/EVALUATION.md has no ```bash code block"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[:2] == ["python", "scripts/evaluate.py"], f"not an evaluate command: {line}"
        commands.append(words[2:])
    return commands


def rollout_of(argv: list[str]) -> str:
    return argv[argv.index("--rollout") + 1] if "--rollout" in argv else "hf"


def readme_commands(rollout: str) -> list[tuple[int, list[str]]]:
    """``(index in the code block, argv)`` of the documented commands with this ``--rollout``."""
    return [(i, a) for i, a in enumerate(readme_evaluation_commands()) if rollout_of(a) == rollout]


def localize(argv: list[str], model: Path | str, out: Path, sglang_url: str | None = None,
             ) -> list[str]:
    """The same command on this machine: the tiny policy for ``--model``, the offline fixtures
    for hub benchmarks (``--data-dir``), :data:`LOCAL_FLAGS`, ``--out`` under ``out`` and the
    test's server for ``--sglang-url``; every other flag as written."""
    args = list(argv)

    def put(flag: str, value: str) -> None:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args.extend([flag, value])

    put("--model", str(model))
    for flag, value in LOCAL_FLAGS.items():
        put(flag, value)
    names = args[args.index("--benchmarks") + 1] if "--benchmarks" in args else "synthetic"
    if set(names.split(",")) - {"synthetic"} and "--data-dir" not in args:
        put("--data-dir", str(FIXTURES))
    put("--out", str(out))
    if sglang_url is not None:
        put("--sglang-url", sglang_url)
    return args


def run_evaluate(argv: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``python scripts/evaluate.py ARGV`` from the repository root; fails with its output."""
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, (
        f"evaluate.py {shlex.join(argv)} exited {done.returncode}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    )
    return done


def check_report(path: Path, argv: list[str]) -> dict[str, Any]:
    """The JSON report reloads, with avg@k in [0, 1] and k samples for each problem."""
    report = json.loads(Path(path).read_text())
    k = int(argv[argv.index("--k") + 1])
    limit = int(argv[argv.index("--limit") + 1])
    names = (argv[argv.index("--benchmarks") + 1] if "--benchmarks" in argv else "synthetic")
    assert list(report["benchmarks"]) == names.split(",")
    for name, b in report["benchmarks"].items():
        assert 0.0 <= b[f"avg@{k}"] <= 1.0, name
        assert 0.0 <= b[f"pass@{k}"] <= 1.0, name
        assert b["num_problems"] == len(b["problems"]) == limit, name
        for p in b["problems"]:
            assert p["n"] == len(p["samples"]) == k, name
            assert all(isinstance(s["text"], str) and s["num_tokens"] >= 1
                       for s in p["samples"]), name
    return report
