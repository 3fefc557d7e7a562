"""DeepSpeed plumbing: the resolved engine config, ranks, collectives, gathered weights.

Nothing here knows about losses or rollouts; the trainer composes it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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
    schedule (:mod:`strace_ds.lr_schedule`, passed to ``deepspeed.initialize``): the result
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
                "schedule belongs to the run config: delete the \"scheduler\" section and use "
                "--warmup_steps, --lr_schedule and --min_lr_ratio"
            )
        notes.append(
            'ds_config "scheduler" (WarmupLR, "auto") ignored: the schedule comes from '
            "--warmup_steps, --lr_schedule and --min_lr_ratio; delete the section"
        )
    if on_cpu:
        for half in ("bf16", "fp16"):
            if cfg.get(half, {}).get("enabled"):
                cfg[half]["enabled"] = False
                notes.append(
                    f"CPU run: {half} disabled, training in float32 (CPU {half} kernels are slow "
                    "and the tiny policy needs the precision); the same file runs in "
                    f"{half} on GPUs"
                )
        zero = cfg.get("zero_optimization", {})
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


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a list of floats over ranks (float64)."""
    return _all_reduce(values, "SUM")


def all_reduce_max(values: list[float]) -> list[float]:
    """Elementwise maximum of a list of floats over ranks (float64)."""
    return _all_reduce(values, "MAX")


def _all_reduce(values: list[float], op: str) -> list[float]:
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def all_gather_cat(values: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Concatenate every rank's 1-D ``values`` (lengths may differ), in rank order.

    Tensors travel padded to the longest rank's length through ``all_gather`` on ``device``
    (the collective's device: a GPU under NCCL); the result is on ``values``' device.
    """
    if world_size() == 1:
        return values
    home = values.device
    work = values.to(device or home).flatten()
    sizes = [torch.zeros(1, dtype=torch.long, device=work.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([work.numel()], device=work.device))
    longest = int(max(sizes))
    padded = torch.zeros(longest, dtype=work.dtype, device=work.device)
    padded[: work.numel()] = work
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)]).to(home)


def all_gather_objects(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gathered_named_parameters(
    module: torch.nn.Module, bucket_numel: int = 50_000_000, zero3: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, full tensor)`` for every parameter, gathering ZeRO-3 shards in buckets.

    Each bucket of at most ``bucket_numel`` elements is all-gathered (a collective: every rank
    must iterate), its tensors are cloned to CPU and yielded, then the bucket is partitioned
    again, so no rank ever holds more than one bucket of gathered weights on the device.
    Names are the Hugging Face parameter names (tied weights appear once).
    """
    named = list(module.named_parameters())
    if not zero3:
        for name, p in named:
            yield name, p.detach().cpu()
        return
    import deepspeed

    bucket: list[tuple[str, torch.nn.Parameter]] = []
    size = 0
    for name, p in named:
        numel = int(getattr(p, "ds_numel", p.numel()))
        if bucket and size + numel > bucket_numel:
            yield from _gather_bucket(deepspeed, bucket)
            bucket, size = [], 0
        bucket.append((name, p))
        size += numel
    if bucket:
        yield from _gather_bucket(deepspeed, bucket)


def _gather_bucket(deepspeed: Any, bucket: list[tuple[str, torch.nn.Parameter]]):
    with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
        tensors = [(name, p.detach().to("cpu", copy=True)) for name, p in bucket]
    yield from tensors


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
