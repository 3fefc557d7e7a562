"""The package's rooms import downwards only: a lower room never imports a higher one.

Lower rooms (``data``, ``losses``, ``rewards``, ``model``, ``storage``) hold the task, the
objective, grading, the policy forward and what a run writes; the higher ones (``train``, the
asset recipes, ``rollout``, ``evaluation``) compose them. An import in a lower room of a higher
one (module level or inside a function) fails here with its file and line. Imports under
``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "strace_ds"

LOWER = ("data", "losses", "rewards", "model", "storage")
HIGHER = (
    "strace_ds.train",
    "strace_ds.assets.recipes",
    "strace_ds.rollout",
    "strace_ds.evaluation",
    # the old paths of modules that moved into the higher rooms (shims for one release)
    "strace_ds.trainer",
    "strace_ds.builders",
    "strace_ds.experience",
    "strace_ds.updater",
    "strace_ds.tiny",
    "strace_ds.tiny_chain",
)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path`` (``from a import b`` gives ``a`` and
    ``a.b``), outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layering_violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for room in LOWER:
        for path in sorted((root / room).rglob("*.py")):
            seen: set[int] = set()
            for line, module in imported_modules(path):
                hit = next((h for h in HIGHER if _is_under(module, h)), None)
                if hit and line not in seen:
                    seen.add(line)
                    rel = path.relative_to(root.parent)
                    bad.append(f"{rel}:{line} imports {module} ({room} must not import {hit})")
    return sorted(bad)


def test_lower_rooms_never_import_higher_ones() -> None:
    bad = layering_violations()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_names_an_injected_upward_import(tmp_path: Path) -> None:
    """The rule fires (file:line) on a planted import, also inside a function, and skips
    ``TYPE_CHECKING`` imports."""
    root = tmp_path / "strace_ds"
    (root / "data").mkdir(parents=True)
    (root / "data" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from strace_ds.rollout.base import Generation\n"
        "\n"
        "def policy():\n"
        "    from strace_ds.assets.recipes.arithmetic import default_policy_dir\n"
        "    return default_policy_dir()\n"
    )
    (root / "model").mkdir()
    (root / "model" / "ok.py").write_text("from strace_ds import assets\nimport strace_ds.train\n")
    bad = layering_violations(root)
    assert bad == [
        "strace_ds/data/bad.py:6 imports strace_ds.assets.recipes.arithmetic "
        "(data must not import strace_ds.assets.recipes)",
        "strace_ds/model/ok.py:2 imports strace_ds.train (model must not import strace_ds.train)",
    ]
