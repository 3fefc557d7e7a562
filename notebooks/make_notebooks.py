"""Write the tutorial notebooks from their percent-format sources, without outputs.

Each notebook is written as a plain Python file in ``notebooks/src/`` (the "percent" format
that Jupytext, VS Code and Spyder understand): a line ``# %%`` starts a code cell, a line
``# %% [markdown]`` starts a markdown cell whose lines are comments (``# `` is stripped).
This script turns every ``src/NN_*.py`` into ``NN_*.ipynb`` next to this file, with empty
outputs, ``execution_count: null`` and deterministic cell ids, so the committed notebooks
are exactly what it generates (``tests/repo/test_notebooks.py`` checks this).

Usage::

    python notebooks/make_notebooks.py            # rewrite notebooks/*.ipynb
    python notebooks/make_notebooks.py --out DIR  # write them elsewhere (the test does this)
    python notebooks/make_notebooks.py --check    # exit 1 if a committed notebook differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
CODE, MARKDOWN = "# %%", "# %% [markdown]"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``[(kind, source)]`` of a percent-format file; ``kind`` is ``"code"`` or ``"markdown"``."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped == MARKDOWN:
            cells.append(("markdown", []))
        elif stripped == CODE:
            cells.append(("code", []))
        elif not cells:
            if stripped:  # text before the first marker would be silently lost
                raise ValueError(f"text before the first '# %%' marker: {line!r}")
        elif cells[-1][0] == "markdown":
            if stripped and not stripped.startswith("#"):
                raise ValueError(f"markdown cell line is not a comment: {line!r}")
            cells[-1][1].append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
        else:
            cells[-1][1].append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def build_notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook of one percent-format file: no outputs, ids ``<stem>-<index>``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    for i, (kind, text) in enumerate(parse_cells(source.read_text())):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(text)  # outputs [], execution_count None
        cell.id = f"{source.stem[:3].rstrip('_')}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into")
    parser.add_argument("--check", action="store_true",
                        help="compare with the notebooks in --out instead of writing")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if not sources:
        raise SystemExit(f"no notebook sources in {SOURCES}")
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        target = args.out / f"{src.stem}.ipynb"
        text = render(build_notebook(src))
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"out of date (run python notebooks/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
