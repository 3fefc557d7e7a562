"""Test tiers, shared fixtures (the embedded tiny policy shipped with the package, a fake SGLang
server), and a guard that keeps one test's in-process rendezvous variables from leaking into
later tests' subprocesses.

Tiers are the folders under ``tests/``: each test gets its folder's marker (``unit``,
``integration``, ``e2e``, ``sglang``, ``studies``, ``repo``). A plain ``python -m pytest -q``
runs the FAST tiers only (``unit``, ``integration`` and the ``repo`` tests not marked ``slow``);
``--all-tiers`` (what CI and the README's test command pass) runs every tier,
``--tiers e2e,studies`` picks some (or ``STRACE_DS_TEST_TIERS``). A test named by path (a
folder, file or node id below ``tests/``) or a ``-m`` expression selects across every tier:
what a user points at is run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "sglang", "studies", "repo")
FAST_TIERS = ("unit", "integration", "repo")
"""The default run: these tiers, less their ``slow`` tests (notebook execution)."""
# ``helpers`` is a package under tests/ (``from helpers.train_run import ...``), and the tests'
# user reward module (``helpers/user_rewards.py``) is named in reward specs as a user's own
# top-level module (``user_rewards:fn``): pyproject's ``pythonpath`` puts tests/ and
# tests/helpers on sys.path (reward workers inherit it); a test that starts a subprocess
# needing them puts them on its PYTHONPATH.


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("strace_ds tiers")
    group.addoption(
        "--tiers", default=None, metavar="T1,T2",
        help=f"run these tiers ({', '.join(TIERS)}, or 'all'); default: the fast ones "
        f"({', '.join(FAST_TIERS)}, less 'slow' tests). Also STRACE_DS_TEST_TIERS.",
    )  # fmt: skip
    group.addoption("--all-tiers", action="store_true", help="run every tier (CI): --tiers all")


def _tier(path: Path) -> str | None:
    try:
        first = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


def _named_explicitly(config: pytest.Config) -> bool:
    """True when the command line names tests (a path below tests/, a node id) or a ``-m``
    expression: then the tier default does not filter."""
    if config.getoption("markexpr"):
        return True
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return False  # no paths: testpaths
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path != TESTS and path != TESTS.parent:
            return True
    return False


def _selected_tiers(config: pytest.Config) -> set[str] | None:
    """The tiers to run, or None for every test collected."""
    spec = config.getoption("tiers") or os.environ.get("STRACE_DS_TEST_TIERS")
    if config.getoption("all_tiers") or (spec or "").strip() == "all":
        return None
    if spec:
        tiers = {t.strip() for t in spec.split(",") if t.strip()}
        unknown = tiers - set(TIERS)
        if unknown:
            raise pytest.UsageError(
                f"--tiers: unknown {sorted(unknown)}; the tiers: {', '.join(TIERS)}"
            )
        return tiers
    if _named_explicitly(config):
        return None
    return set(FAST_TIERS) | {"fast"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # the folder's marker, so no test file carries one
        tier = _tier(Path(str(item.path)))
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
    tiers = _selected_tiers(config)
    if tiers is None:
        return
    fast_only = "fast" in tiers
    keep, drop = [], []
    for item in items:
        tier = _tier(Path(str(item.path)))
        chosen = tier in tiers and not (fast_only and item.get_closest_marker("slow"))
        (keep if chosen else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    tiers = _selected_tiers(config)
    if tiers is None:
        return "tiers: all collected"
    if "fast" in tiers:
        return (f"tiers: the fast default ({', '.join(FAST_TIERS)}, less 'slow'); "
                "--all-tiers runs every tier")
    return f"tiers: {', '.join(sorted(tiers))}"

# What strace_ds.distributed.init_distributed (and the deepspeed launcher) put in os.environ.
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")


@pytest.fixture(autouse=True)
def _restore_rendezvous_env():
    """A test that starts torch.distributed in-process sets RANK/MASTER_PORT in os.environ;
    every later subprocess (training runs, notebook kernels) would inherit them and try to
    listen on the port this process's store already holds (EADDRINUSE, seen in CI)."""
    before = {k: os.environ.get(k) for k in _RENDEZVOUS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def fake():
    """A fake SGLang HTTP server (``tests/helpers/fake_sglang.py``) on a free port, closed after."""
    from helpers.fake_sglang import FakeSGLang

    server = FakeSGLang()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    """The default warm-started tiny Qwen3 policy: the pinned copy in ``strace_ds/assets``."""
    from strace_ds.assets import default_policy_dir

    return default_policy_dir()
