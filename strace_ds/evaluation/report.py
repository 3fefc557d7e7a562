"""Present an evaluation report: an aligned console table and a JSON file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def format_table(report: dict[str, Any]) -> str:
    """Plain aligned table: one row per benchmark, then the unweighted average.

    Columns: problems, avg@k, every pass@j (in %), the share of answers truncated at
    ``max_new_tokens`` and the mean answer length in tokens.
    """
    k, ks = report["k"], report["ks"]
    metrics = [f"avg@{k}", *(f"pass@{j}" for j in ks)]
    header = ["benchmark", "problems", *metrics, "trunc%", "tokens"]
    rows = []
    for name, b in report["benchmarks"].items():
        rows.append(
            [name, str(b["num_problems"])]
            + [f"{100 * b[m]:.1f}" for m in metrics]
            + [f"{100 * b['truncated_frac']:.1f}", f"{b['mean_response_tokens']:.0f}"]
        )
    if len(report["benchmarks"]) > 1:
        avg = report["average"]
        rows.append(["average", ""] + [f"{100 * avg[m]:.1f}" for m in metrics] + ["", ""])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
