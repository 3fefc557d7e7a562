"""Damaging and reading a run's state, for the reliability tests (``tests/unit/storage`` and
``tests/e2e``): flipped bytes, a dataset of given golds, the TensorBoard events of a run."""

from __future__ import annotations

import json
from pathlib import Path

BAD_GOLDS = ["}{", "}x{", "}", "}{}{", "\\text{}", "$$"]



def _flip(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of ``path`` (its size unchanged)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - n // 2
    for i in range(max(mid, 0), max(mid, 0) + min(n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _unlist(path: Path, *names: str, ranks_record: bool = True) -> None:
    """Delete ``names`` from the checkpoint ``path`` and drop them from its manifest, as a
    checkpoint published without them; ``ranks_record=False`` also drops the record of each
    rank's required files (a manifest as older code or ``manifest write`` wrote it)."""
    data = json.loads((path / "manifest.json").read_text())
    for n in names:
        (path / n).unlink()
        del data["files"][n]
    if not ranks_record:
        data.pop("ranks")
    (path / "manifest.json").write_text(json.dumps(data))



def _jsonl(path: Path, golds: list[str]) -> Path:
    rows = [{"problem": f"What is question {i}?", "answer": g} for i, g in enumerate(golds)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path



def _events(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    hists = {t: [e.step for e in acc.Histograms(t)] for t in acc.Tags()["histograms"]}
    return scalars, hists

