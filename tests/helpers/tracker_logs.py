"""Reading back what the W&B (offline) and MLflow (local file store) trackers logged:
``{name: [(step, value), ...]}``, the shape of :func:`helpers.train_run._scalars`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32768  # the W&B transaction log is LevelDB's log format: 32 KiB blocks
_HEADER = 7  # its file header (':W&B', a magic number, a version), then each record's header


def offline_trackers(monkeypatch, tmp_path: Path) -> str:
    """Point W&B (offline mode) and MLflow (a file store under ``tmp_path``) at local files,
    skipping the test when either is not installed; returns MLflow's tracking URI."""
    import pytest

    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def wandb_offline_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """The history of the one offline W&B run under ``root`` (its ``run-*.wandb`` file), W&B's
    own keys (``_step``, ``_runtime``, ``_timestamp``) left out."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(root).rglob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    out: dict[str, list[tuple[int, float]]] = {}
    pos, chunk = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        chunk += data[pos : pos + length]
        pos += length
        if kind not in (1, 4):  # FULL or LAST: a whole record
            continue
        record = pb.Record()
        record.ParseFromString(chunk)
        chunk = b""
        if record.WhichOneof("record_type") != "history":
            continue
        items = record.history.item
        row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        step = int(row.pop("_step"))
        for key, value in row.items():
            if not key.startswith("_"):
                out.setdefault(key, []).append((step, float(value)))
    return out


def mlflow_scalars(tracking_uri: str, run_name: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's history of the MLflow run ``run_name`` at ``tracking_uri``, by step."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.info.run_name == run_name
    ]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run_id = runs[0].info.run_id
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in runs[0].data.metrics
    }
