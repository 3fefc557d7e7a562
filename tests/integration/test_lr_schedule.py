"""The learning-rate schedule: exact values of the pure function, and what DeepSpeed applies.

The engine tests build the trainer's real engine (``builders.build_policy_engine``: the tiny
policy under ZeRO-3 on CPU) and read ``engine.get_lr()`` before each optimizer update, i.e.
the learning rate that update uses.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch

from strace_ds import deepspeed_config
from strace_ds import distributed as dist_utils
from strace_ds.config import TrainConfig
from strace_ds.distributed import init_distributed
from strace_ds.storage import checkpoint as ckpt
from strace_ds.train.lr_schedule import lr_at, lr_multiplier
from strace_ds.train.setup import build_policy_engine

REPO = Path(__file__).resolve().parents[2]
LR = 1e-3
# 2 prompts x 2 answers, 2 mini-batches of 2 rows, micro-batch 2: one micro-batch per update,
# 2 updates per step, 3 steps: 6 optimizer updates in the run.
SMALL = {
    "prompts_per_step": 2,
    "group_size": 2,
    "mini_batches": 2,
    "micro_batch_size": 2,
    "steps": 3,
    "lr": LR,
    "ds_config": str(REPO / "ds_configs" / "zero3.json"),
}
TOTAL = 6


def _mult(u, w, schedule="constant", r=0.0, total=TOTAL):
    return lr_multiplier(u, warmup_steps=w, total_updates=total, schedule=schedule, min_lr_ratio=r)


def test_warmup_is_exact_and_starts_above_zero():
    assert [_mult(u, 0) for u in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert [_mult(u, 1) for u in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert [_mult(u, 3) for u in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(0, lr=LR, warmup_steps=3, total_updates=TOTAL) == LR * 0.25


def test_decays_are_exact():
    # linear: p = (u - W) / (T - W); the last update (u = T - 1) still moves
    assert [_mult(u, 0, "linear", total=4) for u in range(4)] == [1.0, 0.75, 0.5, 0.25]
    with_warmup = [_mult(u, 2, "linear", total=6) for u in range(6)]
    assert with_warmup == [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]
    assert [_mult(u, 0, "linear", 0.5, total=4) for u in range(4)] == [1.0, 0.875, 0.75, 0.625]
    cosine = [_mult(u, 1, "cosine", 0.1, total=5) for u in range(5)]
    want = [0.5] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert cosine == want
    assert cosine[1] == 1.0 and cosine[3] == pytest.approx(0.55)
    # past the end (a resume with fewer steps) it stays at the floor
    assert _mult(10, 0, "linear", 0.2, total=4) == 0.2
    # warm-up longer than the run: the run never leaves it
    assert [_mult(u, 8, "cosine", total=4) for u in range(4)] == [1 / 9, 2 / 9, 3 / 9, 4 / 9]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"lr_schedule": "linear", "min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"lr_schedule": "cosine", "min_lr_ratio": -0.1}, "min_lr_ratio"),
        ({"min_lr_ratio": 0.1}, "min_lr_ratio"),  # no effect with the constant schedule
    ],
)
def test_bad_schedule_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_ds_config_scheduler_is_dropped_or_rejected():
    run = {
        "micro_batch": 2,
        "grad_accum": 1,
        "world_size": 1,
        "lr": LR,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "on_cpu": True,
    }
    template = {
        "type": "WarmupLR",
        "params": {
            "warmup_min_lr": 0,
            "warmup_max_lr": "auto",
            "warmup_num_steps": "auto",
            "warmup_type": "linear",
        },
    }
    cfg, notes = deepspeed_config.resolve_ds_config({"scheduler": template}, **run)
    assert "scheduler" not in cfg and any("scheduler" in n for n in notes)
    for own in (
        {"type": "WarmupLR", "params": {**template["params"], "warmup_num_steps": 100}},
        {"type": "WarmupDecayLR", "params": {"total_num_steps": 10, "warmup_max_lr": "auto"}},
    ):
        with pytest.raises(ValueError, match="--lr_schedule"):
            deepspeed_config.resolve_ds_config({"scheduler": own}, **run)
    for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
        shipped = deepspeed_config.load_ds_config(REPO / "ds_configs" / name)
        assert "scheduler" not in shipped, name


# ----------------------------------------------------------------------------- the engine
def _engine(tiny_policy, **overrides):
    """The trainer's own engine, built by ``builders.build_policy_engine``."""
    init_distributed()
    cfg = TrainConfig(**{**SMALL, **overrides})
    stub = types.SimpleNamespace(cfg=cfg, logged=[])
    policy = build_policy_engine(cfg.optim, cfg.ds_config, cfg.layout(1), str(tiny_policy),
                                 log=stub.logged.append)
    return policy.engine, stub


def _updates(engine, n: int) -> list[float]:
    """Run ``n`` optimizer updates; the lr each one used (read just before it)."""
    ids = torch.tensor([[1, 5, 7, 9, 11], [1, 6, 8, 10, 12]])
    used = []
    for _ in range(n):
        loss = engine(input_ids=ids).logits.float().pow(2).mean()
        engine.backward(loss, scale_wrt_gas=False)
        used.append(float(engine.get_lr()[0]))
        engine.step()
    return used


def _weights(engine) -> dict[str, torch.Tensor]:
    return dict(dist_utils.gathered_named_parameters(engine.module, zero3=True))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_engine_applies_the_schedule(tiny_policy, warmup, schedule):
    ratio = 0.1 if schedule != "constant" else 0.0
    engine, stub = _engine(
        tiny_policy, warmup_steps=warmup, lr_schedule=schedule, min_lr_ratio=ratio
    )
    before = _weights(engine)
    first = _updates(engine, 1)
    moved = _weights(engine)
    assert any(not torch.equal(before[k], moved[k]) for k in before), "update 0 did not move"
    used = first + _updates(engine, TOTAL - 1)
    # LambdaLR applies base lr x multiplier: the same float product, so equality is exact
    want = [LR * _mult(u, warmup, schedule, ratio) for u in range(TOTAL)]
    assert used == want
    assert used[0] > 0 and all(v > 0 for v in used)
    assert any(line.startswith("lr: peak") for line in stub.logged)


def test_schedule_survives_checkpoint_and_resume(tiny_policy, tmp_path):
    kw = {"warmup_steps": 2, "lr_schedule": "cosine", "min_lr_ratio": 0.2}
    want = [LR * _mult(u, 2, "cosine", 0.2) for u in range(TOTAL)]
    engine, _ = _engine(tiny_policy, **kw)
    assert _updates(engine, 3) == want[:3]
    saved = ckpt.save_checkpoint(engine, tmp_path, ckpt.TrainerState(step=1), keep_last=2)
    fresh, _ = _engine(tiny_policy, **kw)
    assert float(fresh.get_lr()[0]) == want[0]  # a new engine starts at update 0 ...
    ckpt.load_checkpoint(fresh, saved)
    assert _updates(fresh, 3) == want[3:]  # ... and the restored one continues at update 3
