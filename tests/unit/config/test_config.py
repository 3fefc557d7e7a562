"""TrainConfig: one typed object from CLI flags, YAML/JSON files and dicts, validated up front."""

from __future__ import annotations

import argparse
import json

import pytest

from strace_ds.config import TrainConfig
from strace_ds.deepspeed_config import resolve_ds_config
from strace_ds.losses import TraceConfig


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(argv))


def test_cli_flags_build_the_same_object_as_a_dict():
    cfg = _parse(
        ["--loss", "grpo", "--lam", "0.5", "--group-size", "4", "--filter_zero_variance", "true"]
    )
    assert cfg == TrainConfig(loss="grpo", lam=0.5, group_size=4, filter_zero_variance=True)
    # the preset with the override applied
    assert cfg.trace_config() == TraceConfig.preset("grpo", lam=0.5)


def test_file_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: p_trace\nsteps: 7\nlr: 0.01\n")
    cfg = _parse(["--config", str(path), "--steps", "9"])
    assert (cfg.loss, cfg.steps, cfg.lr) == ("p_trace", 9, 0.01)
    jpath = tmp_path / "run.json"
    jpath.write_text(json.dumps({"loss": "gspo", "steps": 3}))
    assert TrainConfig.from_file(jpath).trace_config().window == "sequence"


def test_trace_form_from_flags_and_nested_yaml(tmp_path):
    cfg = _parse(["--loss", "s_trace", "--form", "weight", "--weight_clock", "position",
                  "--weight_max", "1.5", "--objective.weight_min", "0.5"])
    assert cfg.trace_config() == TraceConfig.preset(
        "s_trace", form="weight", weight_clock="position", weight_min=0.5, weight_max=1.5)
    path = tmp_path / "run.yaml"
    path.write_text("objective:\n  loss: p_trace\n  form: gate\n")
    assert TrainConfig.from_file(path).trace_config() == TraceConfig.preset("p_trace", form="gate")
    with pytest.raises(ValueError, match="form"):
        TrainConfig(loss="p_trace", form="product")
    with pytest.raises(ValueError, match="window='causal'"):
        TrainConfig(loss="gspo", form="weight")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loss": "ppo"}, "loss"),
        ({"advantage": "gae"}, "advantage"),
        ({"group_size": 1}, "group_size"),
        ({"lam": 1.5}, "lam"),
        ({"loss_agg": "sum"}, "loss_agg"),
        ({"entropy_top_quantile": 0.0}, "entropy_top_quantile"),
        ({"temperature": 0.0}, "temperature"),
        ({"overlong": "cut"}, "overlong"),
        ({"rollout": "sglang"}, "sglang-url"),
        ({"steps": 0}, "steps"),
        ({"overlong": "soft", "overlong_buffer": 50, "max_new_tokens": 40}, "overlong_buffer"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_unknown_and_mistyped_file_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_file(path)
    path.write_text("steps: three\n")
    with pytest.raises(ValueError, match="steps must be an integer"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_world_size_divisibility():
    cfg = TrainConfig(prompts_per_step=6, group_size=4, mini_batches=2, micro_batch_size=3)
    cfg.validate(world_size=2)  # 3 prompts x 4 answers = 12 rows per rank, 6 per mini-batch
    assert cfg.micro_batches_per_update(2) == (3, 2)
    assert cfg.micro_batches_per_update(1) == (3, 4)
    with pytest.raises(ValueError, match="prompts_per_step"):
        cfg.validate(world_size=4)
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(prompts_per_step=6, group_size=4, mini_batches=2, micro_batch_size=5).validate(
            1
        )
    with pytest.raises(ValueError, match="mini_batches"):
        TrainConfig(prompts_per_step=3, group_size=3, mini_batches=2).validate(1)


def test_ds_config_auto_fields_and_cpu_precision():
    raw = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
    }
    run = {
        "micro_batch": 8,
        "grad_accum": 2,
        "world_size": 2,
        "lr": 1e-4,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
    }
    cfg, notes = resolve_ds_config(raw, **run, on_cpu=True)
    assert cfg["train_batch_size"] == 8 * 2 * 2
    assert cfg["optimizer"]["params"] == {"lr": 1e-4, "weight_decay": 0.1}
    assert cfg["bf16"]["enabled"] is False and "offload_optimizer" not in cfg["zero_optimization"]
    assert any("bf16 disabled" in n for n in notes)
    assert raw["bf16"]["enabled"] is True  # the caller's dict is untouched
    gpu, gpu_notes = resolve_ds_config(raw, **run, on_cpu=False)
    assert gpu["bf16"]["enabled"] is True and gpu_notes == []
    fixed = {**raw, "train_micro_batch_size_per_gpu": 4}
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        resolve_ds_config(fixed, **run, on_cpu=True)


def test_zero3_runs_torchs_own_linear_unless_the_config_says_otherwise():
    """Stage 3 gets ``memory_efficient_linear: false`` (DeepSpeed's default replaces
    ``torch.nn.functional.linear`` process-wide); an explicit value and other stages stay."""
    run = {"micro_batch": 4, "grad_accum": 1, "world_size": 1, "lr": 1e-4, "weight_decay": 0.0,
           "grad_clip": 1.0, "on_cpu": True}
    z3, _ = resolve_ds_config({"zero_optimization": {"stage": 3}}, **run)
    assert z3["zero_optimization"]["memory_efficient_linear"] is False
    kept, _ = resolve_ds_config(
        {"zero_optimization": {"stage": 3, "memory_efficient_linear": True}}, **run
    )
    assert kept["zero_optimization"]["memory_efficient_linear"] is True
    z2, _ = resolve_ds_config({"zero_optimization": {"stage": 2}}, **run)
    assert "memory_efficient_linear" not in z2["zero_optimization"]
