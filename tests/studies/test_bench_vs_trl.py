"""The TRL comparison (``benchmarks/bench_vs_trl.py``): its arguments, the TRL batch settings
that match our step, the grouping of TRL's steps into ours, the report's medians, ratios and
intervals on made-up timings, and the reward it hands TRL. Needs no trl and trains nothing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_vs_trl.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_main_jobs_shape():
    m = _module()
    args = m.parse_args([])
    assert (args.rounds, args.steps, args.warmup, args.write) == (3, 8, 2, False)
    assert args.shape == m.Shape(32, 8, 40, 2, 64)
    assert m.parse_args(["--long"]).shape.max_new_tokens == 512
    assert m.parse_args(["--long", "--max-new-tokens", "256"]).shape.max_new_tokens == 256
    flags = m.ours_flags(args.shape, 8, 0, 2)
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs["--loss"] == "grpo" and pairs["--reward"] == "math_verify"
    assert (pairs["--prompts_per_step"], pairs["--group_size"], pairs["--max_new_tokens"],
            pairs["--mini_batches"]) == ("32", "8", "40", "2")  # fmt: skip


@pytest.mark.parametrize("argv", [["--steps", "2"], ["--rounds", "0"], ["--micro", "48"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        _module().parse_args(argv)


def test_trl_makes_one_generation_and_two_updates_per_step():
    m = _module()
    b = m.trl_batching(m.Shape())
    # 256 answers per generation = 64 rows x 4 micro-steps; an update = 2 micro-steps (128 rows)
    assert b == {"per_device_train_batch_size": 64, "gradient_accumulation_steps": 2,
                 "steps_per_generation": 4, "num_iterations": 1, "num_generations": 8}  # fmt: skip
    b = m.trl_batching(m.Shape(prompts=8, group=4, updates=1, micro=16))
    assert (b["gradient_accumulation_steps"], b["steps_per_generation"]) == (2, 2)


def test_trl_steps_are_grouped_into_ours():
    m = _module()
    marks = [[0.0, 3.0], [3.5, 5.0], [5.0, 9.0], [9.2, 10.0]]
    gens = [{"score_s": 2.0, "generate_s": 1.5, "reward_s": 0.25, "answer_tokens": 20.0,
             "reward": 0.5}] * 2  # fmt: skip
    steps = m.group_trl_steps(marks, gens, updates=2)
    assert [s["step_s"] for s in steps] == [5.0, 5.0]
    assert steps[0]["prepare_s"] == pytest.approx(0.25) and steps[0]["train_s"] == 3.0
    with pytest.raises(ValueError, match="whole steps"):
        m.group_trl_steps(marks[:3], gens, updates=2)


def _run(side: str, rnd: int, step_s: list[float]) -> dict:
    return {"side": side, "round": rnd, "wall_s": 10.0, "load": "1.0 -> 1.0",
            "steps": [{"step_s": v, "generate_s": v / 2, "answer_tokens": 20.0, "reward": 0.5}
                      for v in step_s]}  # fmt: skip


def test_medians_ratios_and_intervals():
    m = _module()
    # warm-up steps (first 2) are slow and must be left out
    runs = [_run("ours", 1, [9, 9, 2, 2, 2]), _run("trl", 1, [9, 9, 4, 4, 4]),
            _run("trl", 2, [9, 9, 5, 5, 5]), _run("ours", 2, [9, 9, 3, 3, 3])]  # fmt: skip
    s = m.summarize(runs, warmup=2, draws=200)["step_s"]
    assert s["ours"] == 2.5 and s["trl"] == 4.5  # pooled medians of 2,2,2,3,3,3 / 4,4,4,5,5,5
    assert s["ours_rounds"] == [2, 3] and s["trl_rounds"] == [4, 5]
    assert s["ratio"] == pytest.approx(2.5 / 4.5)
    assert s["ratio_rounds"] == pytest.approx([0.5, 0.6])
    lo, hi = s["ratio_ci"]
    assert 2 / 5 <= lo <= s["ratio"] <= hi <= 3 / 4  # bounded by the extreme resamples
    constant = [_run("ours", 1, [1, 1, 2, 2]), _run("trl", 1, [1, 1, 4, 4])]
    c = m.summarize(constant, warmup=2, draws=50)["step_s"]
    assert c["ratio"] == 0.5 and c["ratio_ci"] == (0.5, 0.5)
    text = m.report(runs, 2, {"shape": "test", "machine": "test"}, draws=200)
    row = (f"| step_s | 2.500 [2.000, 3.000] | 4.500 [4.000, 5.000] | "
           f"**0.56** [{lo:.2f}, {hi:.2f}] (0.50-0.60) |")  # fmt: skip
    assert row in text
    assert "| sync_s | - | - | - |" in text and "| answer tokens (mean) | 20.00 | 20.00 |" in text


def test_bootstrap_is_seeded():
    m = _module()
    a, b = [[1.0, 2.0, 3.0]], [[2.0, 3.0, 4.0, 5.0]]
    assert m.bootstrap_ratio(a, b, 300, seed=1) == m.bootstrap_ratio(a, b, 300, seed=1)


def test_the_trl_reward_grades_as_math_verify():
    m = _module()
    completions = [[{"role": "assistant", "content": r"so \boxed{7}"}],
                   [{"role": "assistant", "content": r"\boxed{8}"}], "plain \\boxed{7}"]
    assert m.math_verify_reward(["q"] * 3, completions, answer=["7", "7", "7"]) == [1.0, 0.0, 1.0]


def test_the_long_policy_never_stops_early(tmp_path):
    m = _module()
    out = m.policy_dir(True, tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == m.NEVER_SAMPLED and cfg["max_position_embeddings"] == 1024
    assert cfg["eos_token_id"] == json.loads((out / "generation_config.json").read_text())[
        "eos_token_id"] != 2  # fmt: skip
    assert m.policy_dir(True, tmp_path) == out  # made once


def test_write_replaces_only_its_own_section():
    m = _module()
    doc = m.merge_section(None, "Default shape", "old table\n")
    doc = m.merge_section(doc, "Long answers", "long table\n")
    doc = m.merge_section(doc, "Default shape", "new table\n")
    assert doc == (f"{m.TITLE}\n\n## Default shape\n\nnew table\n\n## Long answers\n\n"
                   "long table\n")  # fmt: skip


def test_the_committed_command_names_no_path_of_the_machine():
    argv = ["--python", "/tmp/a/.venv/bin/python", "--trl-python=/opt/trl/bin/python", "--long",
            "--rounds", "2", "--work", "/tmp/bl/work", "--write"]
    assert _module().portable_cmdline(argv) == (
        "python -m benchmarks.bench_vs_trl --python PY --trl-python TRL_PY --long --rounds 2 "
        "--write"
    )
