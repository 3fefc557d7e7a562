"""The repository is self-contained: no reference to a path outside it, no dead doc links.

A user gets this repository and nothing else, so the code, tests, notebooks and docs must not
cite files of the machines it was written on (the team's notes, home directories). The
contract of the loss family is ``docs/ALGORITHMS.md``; the measured CPU set-up is
``docs/STACK_ON_CPU.md``. Every relative link of the markdown files must point to a file of
the repository, and every section of ``docs/ALGORITHMS.md`` that the code cites by name
("Selection", "Numerics", ...) must exist there.

The patterns below are written so that this file does not match them itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALGORITHMS = REPO / "docs" / "ALGORITHMS.md"

OUTSIDE_PATTERNS = {
    "an absolute path of the development machines": re.compile(r"/wor[k]/"),
    "the team's design or notes folder": re.compile(r"shared[/](?:design|notes|seeds|hooks)"),
    "the seeds folder": re.compile(r"\.\.[/]seeds"),
    "a folder of design notes": re.compile(r"design[ ]folder", re.IGNORECASE),
    "a home directory": re.compile(r"(?<![\w.~-])/(?:home|Users)/[A-Za-z_]|(?<![\w.~-])/roo[t]/"),
}
"""What no tracked text file may contain (description -> pattern)."""

DESIGN_DOCUMENTS = tuple(
    f"{stem}.md" for stem in ("ARCHITECTURE", "STYLE", "ALGORITHMS", "STACK_ON_CPU")
)
"""Names of design documents: mentioning one is only allowed if the repository has it."""

MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
SECTION_CITATION = re.compile(
    r"ALGORITHMS\.md\W{0,16}?(?:sections?\s+)?\"([^\"\n]{1,80})\"(?:\s+and\s+\"([^\"\n]{1,80})\")?"
)
SELF_CITATION = re.compile(r"sections?\s+\"([^\"\n]{1,80})\"(?:\s+and\s+\"([^\"\n]{1,80})\")?")


def _repo_files() -> list[str]:
    """Tracked files plus new files not ignored by ``.gitignore`` (not yet committed)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout ({err}): cannot list the repository's files")
    names = sorted({n for n in out.stdout.decode().split("\0") if n})
    return [n for n in names if (REPO / n).is_file()]  # deleted but still tracked: skip


def _text(name: str) -> str | None:
    """The file's text, or None for a binary file."""
    data = (REPO / name).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _texts() -> dict[str, str]:
    texts = {name: _text(name) for name in _repo_files()}
    return {name: text for name, text in texts.items() if text is not None}


def _headings(markdown: str) -> list[str]:
    body = FENCE.sub("", markdown)
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", body, re.M)]


def test_no_reference_to_paths_outside_the_repository():
    texts = _texts()
    assert texts, "no text files found"
    basenames = {Path(name).name for name in texts}
    patterns = dict(OUTSIDE_PATTERNS)
    for doc in DESIGN_DOCUMENTS:
        if doc not in basenames:
            patterns[f"{doc}, which is not in the repository"] = re.compile(re.escape(doc))
    found = []
    for name, text in texts.items():
        for lineno, line in enumerate(text.splitlines(), 1):
            for why, pattern in patterns.items():
                if pattern.search(line):
                    found.append(f"{name}:{lineno}: {why}: {line.strip()[:120]}")
    assert not found, "references to paths outside the repository:\n" + "\n".join(found)


def _markdown_files() -> list[str]:
    return [name for name in _repo_files() if name.endswith(".md")]


def test_markdown_relative_links_point_to_existing_files():
    names = _markdown_files()
    assert "README.md" in names and "docs/ALGORITHMS.md" in names
    broken = []
    for name in names:
        text = (REPO / name).read_text(encoding="utf-8")
        body = INLINE_CODE.sub("", FENCE.sub("", text))
        targets = MARKDOWN_LINK.findall(body) + REFERENCE_LINK.findall(body)
        for target in targets:
            if re.match(r"^(?:[a-z][a-z0-9+.-]*:|#|//)", target, re.IGNORECASE):
                continue  # a URL, mail address or an anchor in the same file
            path = target.split("#", 1)[0].split("?", 1)[0]
            resolved = (REPO / name).parent / path
            if path.startswith("/") or not resolved.exists():
                broken.append(f"{name}: [{target}] -> {path} does not exist")
            elif REPO.resolve() not in resolved.resolve().parents and resolved.resolve() != REPO:
                broken.append(f"{name}: [{target}] leaves the repository")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_cited_sections_of_algorithms_md_exist():
    headings = _headings(ALGORITHMS.read_text(encoding="utf-8"))
    texts = _texts()
    missing = []
    for name, text in texts.items():
        if name.endswith(".ipynb"):
            continue  # generated from notebooks/src, which is scanned
        cites = [g for m in SECTION_CITATION.finditer(text) for g in m.groups() if g]
        if name == "docs/ALGORITHMS.md":
            cites += [g for m in SELF_CITATION.finditer(text) for g in m.groups() if g]
        for section in cites:
            if not any(h.startswith(section) for h in headings):
                missing.append(f"{name}: section {section!r}")
    listing = "\n".join(missing)
    assert not missing, f"sections cited but not headings of docs/ALGORITHMS.md:\n{listing}"


def test_ruff_check_passes():
    """The lint rules of pyproject.toml ``[tool.ruff]`` hold on every file (what the pre-commit
    hook runs)."""
    ruff = pytest.importorskip("ruff.__main__")  # a dev dependency
    proc = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_ruff_format_holds_on_the_package_and_scripts():
    """``ruff format --check .``: the scope is pyproject.toml ``[tool.ruff.format]`` (the
    package and scripts/; what the pre-commit hook formats)."""
    ruff = pytest.importorskip("ruff.__main__")
    proc = subprocess.run([ruff.find_ruff_bin(), "format", "--check", "--no-cache", "."],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert "strace_ds/train/loop.py" not in proc.stdout


# ----------------------------------------------------------------------------- test layout
TESTS = REPO / "tests"
TIERS = ("unit", "integration", "e2e", "sglang", "studies", "repo")


def _test_sources() -> list[Path]:
    return [p for p in TESTS.rglob("*.py") if "sglang_cpu_stub" not in p.parts]


def test_no_test_module_imports_another() -> None:
    """Shared code lives in the ``tests/helpers`` package: a test module (or helper) importing a
    ``test_*`` module would run that module's tests' imports and tie two tiers together."""
    import ast

    found = []
    for path in _test_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names
                      if any(part.startswith("test_") for part in name.split("."))]
    assert not found, "import from tests/helpers instead:\n" + "\n".join(found)


def test_test_module_names_are_unique() -> None:
    """pytest imports test files by basename (``rootdir`` mode, no ``__init__.py``): two
    ``test_x.py`` in different folders fail the whole run's collection ("import file
    mismatch"), which a run of one folder alone does not show."""
    seen: dict[str, list[str]] = {}
    for p in TESTS.rglob("test_*.py"):
        seen.setdefault(p.name, []).append(str(p.relative_to(REPO)))
    twins = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not twins, f"rename one of each: {twins}"


def test_every_test_module_is_in_a_tier() -> None:
    """``tests/conftest.py`` gives each test its folder's tier marker: a test file outside the
    tier folders would get none and run in no tier's selection."""
    outside = [str(p.relative_to(REPO)) for p in TESTS.rglob("test_*.py")
               if p.relative_to(TESTS).parts[0] not in TIERS]
    assert not outside, outside


def test_cited_test_files_exist() -> None:
    """A ``tests/...py`` path a doc or a source file cites is a file (moves update them)."""
    cited = re.compile(r"(?<![\w/.])tests/[\w/]+\.py")
    missing = []
    for name in _repo_files():
        if not name.endswith((".md", ".py", ".sh", ".yaml", ".toml")):
            continue
        text = (REPO / name).read_text(errors="replace")
        missing += [f"{name}: {m}" for m in sorted(set(cited.findall(text)))
                    if not (REPO / m).is_file()]
    assert not missing, "\n".join(missing)
