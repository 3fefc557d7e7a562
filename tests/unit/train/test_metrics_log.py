"""The run's metrics.jsonl: one line per training step and evaluation, rewritten on resume."""

from __future__ import annotations

import json
import math

import pytest

from strace_ds.train.monitor import METRICS_FILE, MetricsLog, read_history

HISTORY = [
    {"eval_step": 0.0, "eval/accuracy": 0.25},
    {"reward/mean": 0.5, "policy/loss": -0.1},
    {"reward/mean": 0.75, "policy/loss": math.nan},
    {"eval_step": 2.0, "eval/accuracy": 0.5},
]


def test_lines_carry_the_step_and_reset_numbers_training_entries(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE)
    log.reset(HISTORY[:2])
    log.append(HISTORY[2], step=2)
    log.append(HISTORY[3])
    rows = read_history(tmp_path)
    assert [r.get("step") for r in rows] == [None, 1, 2, None]
    assert [r.get("eval_step") for r in rows] == [0.0, None, None, 2.0]
    assert rows[1] == {"step": 1, "reward/mean": 0.5, "policy/loss": -0.1}
    assert math.isnan(rows[2]["policy/loss"])  # NaN survives as JSON's NaN token
    # A resume from step 1 rewrites the file from the checkpoint's history: the re-run
    # step 2 then appears once.
    log.reset(HISTORY[:2])
    log.append(HISTORY[2], step=2)
    assert [r.get("step") for r in read_history(tmp_path)] == [None, 1, 2]
    # reset numbers the training entries in order, as the appends did
    log.reset(HISTORY)
    assert [r.get("step") for r in read_history(tmp_path)] == [None, 1, 2, None]


def test_a_cut_last_line_is_skipped_and_a_bad_middle_line_named(tmp_path):
    path = tmp_path / METRICS_FILE
    good = json.dumps({"step": 1, "reward/mean": 0.5})
    path.write_text(good + "\n" + '{"step": 2, "rew')
    assert read_history(tmp_path) == [{"step": 1, "reward/mean": 0.5}]
    path.write_text('{"step": 1, "rew\n' + good + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 is not JSON"):
        read_history(tmp_path)


def test_only_the_writing_rank_touches_the_file(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE, enabled=False)
    log.reset(HISTORY)
    log.append(HISTORY[1], step=1)
    assert not (tmp_path / METRICS_FILE).exists()
