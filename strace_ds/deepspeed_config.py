"""The DeepSpeed engine config: read a ``ds_config`` file, fill its ``"auto"`` fields from
the run config, adapt it to the device, and read its ZeRO stage.

Nothing here touches torch.distributed (the collectives are :mod:`strace_ds.distributed`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

AUTO = "auto"


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"ds_config {str(path)!r} does not exist; pass --ds_config ds_configs/zero3.json "
            "(or zero2.json, zero3_offload.json)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"ds_config {str(path)!r} is not valid JSON: {err}") from None


def resolve_ds_config(
    raw: dict[str, Any],
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    on_cpu: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Fill the ``"auto"`` fields from the run's config and adapt precision to the device.

    Batch sizes and optimizer settings belong to :class:`~strace_ds.config.TrainConfig`; a
    DeepSpeed file that fixes them to other numbers is rejected (the same figure set in two
    places is how runs silently differ from what was asked). So does the learning-rate
    schedule (:mod:`strace_ds.train.lr_schedule`, passed to ``deepspeed.initialize``): the result
    has no ``"scheduler"`` section; the old ``WarmupLR`` template with ``"auto"`` fields is
    dropped (announced), any other scheduler is rejected. Returns the config and the list of
    announcements (precision changes, dropped sections) to print.
    """
    cfg = copy.deepcopy(raw)
    notes: list[str] = []
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": grad_clip,
    }
    for key, value in wanted.items():
        _fill(cfg, key, value, f"ds_config[{key!r}]")
    opt = cfg.get("optimizer", {}).get("params", {})
    _fill(opt, "lr", lr, "ds_config optimizer.params.lr", flag="--lr")
    _fill(
        opt,
        "weight_decay",
        weight_decay,
        "ds_config optimizer.params.weight_decay",
        flag="--weight_decay",
    )
    if "scheduler" in cfg:
        sched = cfg.pop("scheduler")
        if not _is_auto_warmup(sched):
            raise ValueError(
                f"ds_config sets its own scheduler ({json.dumps(sched)}); the learning-rate "
                'schedule belongs to the run config: delete the "scheduler" section and use '
                "--warmup_steps, --lr_schedule and --min_lr_ratio"
            )
        notes.append(
            'ds_config "scheduler" (WarmupLR, "auto") ignored: the schedule comes from '
            "--warmup_steps, --lr_schedule and --min_lr_ratio; delete the section"
        )
    zero = cfg.get("zero_optimization", {})
    if zero_stage(cfg) == 3:
        # ZeRO-3's default (true) replaces torch.nn.functional.linear for the whole process
        # with an autograd Function, and never puts it back: every linear layer after the
        # policy loads pays for it, the rollout engine's plain copy and the reference included
        # (generation +25% on the tiny policy). The plain linear gives the same update (tested
        # against DeepSpeed's linear to 1e-5); a config that sets the key keeps its choice.
        zero.setdefault("memory_efficient_linear", False)
    if on_cpu:
        for half in ("bf16", "fp16"):
            if cfg.get(half, {}).get("enabled"):
                cfg[half]["enabled"] = False
                notes.append(
                    f"CPU run: {half} disabled, training in float32 (CPU {half} kernels are slow "
                    "and the tiny policy needs the precision); the same file runs in "
                    f"{half} on GPUs"
                )
        for key in ("offload_optimizer", "offload_param"):
            if zero.get(key, {}).get("device") not in (None, "none"):
                zero.pop(key)
                notes.append(
                    f"CPU run: zero_optimization.{key} dropped (the model already "
                    "lives in CPU memory)"
                )
    return cfg, notes


def _is_auto_warmup(sched: Any) -> bool:
    """The ``WarmupLR`` section the shipped configs used to carry: every number ``"auto"``."""
    if not isinstance(sched, dict) or sched.get("type") != "WarmupLR":
        return False
    params = sched.get("params", {})
    allowed = {
        "warmup_min_lr": (0, AUTO),
        "warmup_max_lr": (AUTO,),
        "warmup_num_steps": (AUTO,),
        "warmup_type": ("linear",),
    }
    return set(sched) <= {"type", "params"} and all(
        key in allowed and value in allowed[key] for key, value in params.items()
    )


def _fill(
    section: dict[str, Any], key: str, value: Any, where: str, flag: str | None = None
) -> None:
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif current != value:
        how = (
            f"set it with {flag} instead" if flag else "the trainer derives it from the run config"
        )
        raise ValueError(
            f'{where} is {current!r} but the run needs {value!r}: write "auto" there; {how}'
        )


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))
