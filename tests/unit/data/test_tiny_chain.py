"""The chain-task policy: the shipped build is the pinned recipe, starts in 10-40% sampled
accuracy with its errors at the decisions, and the recipe builds, publishes and reuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from strace_ds import assets
from strace_ds.assets.recipes import arithmetic as tiny
from strace_ds.assets.recipes import chain as tiny_chain
from strace_ds.data.chain import ChainConfig, chain_dataset

_EQ = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")


@pytest.mark.parametrize("build", tiny_chain.shipped_chain_builds(), ids=lambda b: b.spec)
def test_shipped_chain_policies_are_their_pinned_builds(build) -> None:
    path = tiny_chain.chain_policy_dir(build.spec)
    assert path == build.path
    info = json.loads((path / tiny.BUILD_INFO).read_text())
    assert info["digest"] == tiny_chain.build_config(build).digest(), (
        f"the shipped chain policy at {path} is not its recipe's build: regenerate it with "
        f"`{tiny_chain.regenerate_command(build)}`"
    )
    assert tiny.file_sha256(path / "model.safetensors") == build.sha256
    assert info["base_sha256"] == tiny.SHIPPED_SHA256
    # unsure, yet it writes the chain: RL has signal in most groups and room to learn
    assert 0.05 <= info["sampled_accuracy_t1"] <= 0.40 < info["greedy_accuracy"]
    assert info["boxed_rate_t1"] >= 0.9


def test_each_chain_shape_gets_its_build() -> None:
    """A spec takes the build of its problems (the teacher's slip rate aside), else the
    default build; the regeneration command rebuilds the same config."""
    long = tiny_chain.LONG_CHAIN_SPEC
    default = tiny_chain.shipped_chain_build()
    assert tiny_chain.build_config(default) == tiny_chain.ChainBuildConfig()
    assert tiny_chain.chain_policy_dir() == tiny_chain.CHAIN_DIR
    assert tiny_chain.chain_policy_dir("chain:filler=2") == tiny_chain.CHAIN_DIR
    assert tiny_chain.chain_policy_dir(long) == tiny_chain.LONG_CHAIN_DIR
    assert tiny_chain.chain_policy_dir("chain:filler=2,decisive=5,slip_rate=0.1") == (
        tiny_chain.LONG_CHAIN_DIR)
    assert tiny_chain.chain_policy_dir("chain:decisive=2,filler=0") == tiny_chain.CHAIN_DIR
    build = tiny_chain.shipped_chain_build(long)
    argv = tiny_chain.regenerate_command(build).split()[3:]
    assert argv == ["--out", str(tiny_chain.LONG_CHAIN_DIR), "--task", long, "--max-new-tokens",
                    str(tiny_chain.LONG_CHAIN_MAX_NEW_TOKENS), "--force"]  # fmt: skip


def test_shipped_chain_policy_errs_at_the_decisions() -> None:
    """Re-measured here (40 held-out problems, T=1): accuracy in 10-45%, and where an answer
    goes wrong it is mostly a decisive result, not a copied operand."""
    path = tiny_chain.chain_policy_dir()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    examples = chain_dataset("test", 40, 5).examples
    with torch.random.fork_rng(devices=[]), tiny.single_thread():
        answers = tiny.sample_answers(model, tok, [e.prompt for e in examples], 1.0, 5, 160)
    texts = tok.batch_decode(answers, skip_special_tokens=True)
    right = sum(tiny.extract_boxed(t) == e.answer for t, e in zip(texts, examples))
    wrong_result = wrong_copy = 0
    for text, ex in zip(texts, examples):
        value = ex.meta["start"]
        for (a, op, b, c), (op0, b0) in zip(_EQ.findall(text), ex.meta["ops"]):
            wrong_copy += (int(a), op, int(b)) != (value, op0, b0)
            wrong_result += int(c) != {"+": int(a) + int(b), "-": int(a) - int(b),
                                       "*": int(a) * int(b)}[op]  # fmt: skip
            value = int(c)
    assert 4 <= right <= 18
    assert wrong_result > 2 * wrong_copy


def test_teacher_slips_at_the_rate_and_stays_consistent() -> None:
    """Slips at the configured rate, never below zero where they happen; later lines follow
    the slipped value (which a later subtraction may then take below zero)."""
    task = ChainConfig(slip_rate=0.3)
    examples = chain_dataset("train", 400, 0, task).examples
    targets = tiny_chain.teacher_targets(examples, task, seed=0)
    eq = re.compile(r"(-?\d+) ([-+*]) (\d+) = (-?\d+)\.")
    slipped = 0
    for ex, target in zip(examples, targets):
        eqs = eq.findall(target)
        assert len(eqs) == task.decisive
        value = ex.meta["start"]
        for a, op, b, c in eqs:
            assert int(a) == value
            exact = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            if int(c) != exact:
                slipped += 1
                assert int(c) >= 0 and abs(int(c) - exact) <= 2
            value = int(c)
        assert target.endswith(f"\\boxed{{{value}}}.")
    assert abs(slipped / (400 * task.decisive) - 0.3) < 0.05


def test_short_build_publishes_reuses_and_guards(tmp_path: Path) -> None:
    cfg = tiny_chain.ChainBuildConfig(sft_steps=3, sft_batch_size=4, eval_n=4, max_new_tokens=16)
    out = tiny_chain.build_chain_policy(tmp_path / "c", cfg)
    info = json.loads((out / tiny.BUILD_INFO).read_text())
    assert info["digest"] == cfg.digest() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    mtime = (out / "model.safetensors").stat().st_mtime
    assert tiny_chain.build_chain_policy(out, cfg) == out  # reused, not rebuilt
    assert (out / "model.safetensors").stat().st_mtime == mtime
    other = tiny_chain.ChainBuildConfig(sft_steps=4, sft_batch_size=4, eval_n=4, max_new_tokens=16)
    with pytest.raises(ValueError, match="another config"):
        tiny_chain.build_chain_policy(out, other)
    AutoModelForCausalLM.from_pretrained(out)  # loads like any HF checkpoint


def test_missing_chain_policy_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(assets, "CHAIN_DIR", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="python -m strace_ds.assets.recipes.chain"):
        tiny_chain.chain_policy_dir()
    monkeypatch.setattr(assets, "LONG_CHAIN_DIR", tmp_path / "gone-too")
    with pytest.raises(FileNotFoundError, match="--task chain:decisive=5,filler=2 --max-new"):
        tiny_chain.chain_policy_dir(tiny_chain.LONG_CHAIN_SPEC)
