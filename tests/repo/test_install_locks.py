"""Locked installs: the constraints files pin everything the installs name, and every install
command (``.ci/run``, the README's, ``scripts/setup_sglang_env.sh --cpu``) uses them.

``constraints/cpu.txt`` locks the trainer's env (with the dev and notebooks extras),
``constraints/sglang-cpu.txt`` SGLang's CPU env; ``scripts/lock.sh`` writes both. These tests
read files only: that the locks really install is checked by installing them (``.ci/run``).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
CPU_LOCK = "constraints/cpu.txt"
SGLANG_LOCK = "constraints/sglang-cpu.txt"
SETUP_SGLANG = REPO / "scripts" / "setup_sglang_env.sh"
PIN = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([0-9][0-9A-Za-z.!+]*)")
"""A lock line: ``name==version``, nothing else (no URL, path, extra or marker)."""


def _pins(lock: str) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file; fails on any line that is not a pin."""
    pins: dict[str, str] = {}
    for n, line in enumerate((REPO / lock).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line)
        assert match, f"{lock}:{n}: {line!r} is not 'name==version'; rerun scripts/lock.sh"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{lock}:{n}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def _assert_locked(requirements: list[str], pins: dict[str, str], lock: str) -> None:
    """Every requirement is pinned in ``pins`` at a version its specifier allows."""
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{text!r} is not locked in {lock}; run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, which {text!r} does not allow; run scripts/lock.sh"
        )


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _section(heading: str) -> str:
    """The README's ``## heading`` section, up to the next ``## `` (or the end)."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match[1]


def _pip_installs(text: str) -> list[str]:
    """The ``pip install`` commands of shell text (one per line or ``&&`` segment)."""
    parts = (part.strip() for line in text.splitlines() for part in line.split("&&"))
    return [p for p in parts if re.search(r"\bpip install\b", p) and not p.startswith("#")]


# ----------------------------------------------------------------------------- the files
@pytest.mark.parametrize("lock", [CPU_LOCK, SGLANG_LOCK])
def test_lock_files_hold_only_pins(lock: str) -> None:
    pins = _pins(lock)
    assert len(pins) > 50  # a whole env, not a handful of direct dependencies
    assert "strace-ds" not in pins  # the project itself is installed from the checkout


def test_cpu_lock_pins_torch_and_every_declared_dependency() -> None:
    pins = _pins(CPU_LOCK)
    assert pins["torch"] == "2.13.0"  # the CPU wheel of .ci/run and the README (no +cpu label)
    project = _pyproject()["project"]
    assert {"dev", "notebooks"} <= set(project["optional-dependencies"])
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    _assert_locked(declared, pins, CPU_LOCK)
    _assert_locked(["antlr4-python3-runtime==4.13.2"], pins, CPU_LOCK)  # math-verify's parser


def test_sglang_lock_pins_what_the_setup_script_installs() -> None:
    script = SETUP_SGLANG.read_text()
    pins = _pins(SGLANG_LOCK)
    default_version = re.search(r'SGLANG_VERSION:-([0-9.]+)\}', script)
    assert default_version, "setup_sglang_env.sh has no SGLANG_VERSION default"
    assert pins["sglang"] == default_version[1]
    # The requirements of the --cpu steps 1 and 3, as written in the script.
    steps = re.search(r"# 1\. (.*?)# 4\. ", script, re.S)
    assert steps, "setup_sglang_env.sh has no --cpu steps 1-3"
    commands = re.sub(r"\\\n", " ", steps[1])
    named = [
        token
        for line in commands.splitlines()
        if line.strip().startswith('"${pip[@]}"') and "--no-deps" not in line
        for token in shlex.split(line)[1:]
    ]
    assert {"torch==2.14.1", "torchvision==0.29.1", "transformers==5.19.0"} <= set(named)
    _assert_locked(named, pins, SGLANG_LOCK)


# ----------------------------------------------------------------------------- their use
def test_ci_installs_with_the_cpu_lock() -> None:
    installs = _pip_installs((REPO / ".ci" / "run").read_text())
    locked = [c for c in installs if "--upgrade pip" not in c]
    assert len(locked) == 2, installs  # torch, then the project with its dev extra
    for command in locked:
        assert f"-c {CPU_LOCK}" in command, f".ci/run installs without the lock: {command}"
    assert "torch==2.13.0" in locked[0]


def test_readme_install_commands_use_the_cpu_lock() -> None:
    quickstart = _pip_installs(_section("Quickstart"))
    notebooks = _pip_installs(_section("Notebooks"))
    assert len(quickstart) == 4 and len(notebooks) == 1, (quickstart, notebooks)
    for command in quickstart + notebooks:
        assert command.endswith(f"-c {CPU_LOCK}"), f"README installs without the lock: {command}"
    assert "torch==2.13.0" in quickstart[0]


def _pytest_commands(text: str) -> list[str]:
    """The ``python -m pytest`` commands of shell text (one per line or ``&&`` segment)."""
    parts = (part.strip() for line in text.splitlines() for part in line.split("&&"))
    return [p.split("#")[0].strip() for p in parts if p.startswith("python -m pytest")]


def test_readme_and_ci_run_every_test_tier() -> None:
    """The README's install-and-test command (Quickstart, command 2), its "Tests" section's
    first command, CONTRIBUTING.md's set-up command and ``.ci/run`` run the same tests: every
    tier (a plain ``python -m pytest -q`` runs only the fast ones, ``tests/conftest.py``)."""
    ci = _pytest_commands((REPO / ".ci" / "run").read_text())
    quickstart = _pytest_commands(_section("Quickstart"))
    tests = _pytest_commands(_section("Tests"))
    contributing = _pytest_commands((REPO / "CONTRIBUTING.md").read_text())
    assert len(ci) == 1 and len(quickstart) == 1, (ci, quickstart)
    assert ci == quickstart == tests[:1] == contributing[:1], (ci, quickstart, tests, contributing)
    assert "--all-tiers" in ci[0].split()


def test_setup_sglang_env_cpu_steps_use_the_sglang_lock() -> None:
    script = SETUP_SGLANG.read_text()
    assert f'lock=(-c "$repo_root/{SGLANG_LOCK}")' in script
    cpu_branch = script[script.index("# 1. torch first") :]
    # The lock joins the pip command before step 1, so steps 1-4 all run under it.
    assert cpu_branch.index('pip+=("${lock[@]}")') < cpu_branch.index('"${pip[@]}" "torch==')
    assert "--unlocked" in script


# ----------------------------------------------------------------------------- notebooks
def test_readme_opens_the_notebooks_with_the_declared_extra() -> None:
    extra = _pyproject()["project"]["optional-dependencies"]["notebooks"]
    assert {canonicalize_name(Requirement(r).name) for r in extra} >= {"jupyterlab", "ipykernel"}
    section = _section("Notebooks")
    assert f'pip install -e ".[notebooks]" -c {CPU_LOCK} && jupyter lab notebooks/' in section
    assert list((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.skipif(
    importlib.util.find_spec("jupyterlab") is None, reason="the notebooks extra is not installed"
)
def test_jupyter_lab_runs_when_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyterlab", "--version"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.fullmatch(r"4\.\d+\.\d+\S*", out.stdout.strip())
