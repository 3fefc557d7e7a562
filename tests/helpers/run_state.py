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

