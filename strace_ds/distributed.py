"""DeepSpeed plumbing: process-group start, ranks, collectives, gathered weights.

Nothing here knows about losses or rollouts; the trainer composes it. The DeepSpeed engine
config (``ds_config``) is :mod:`strace_ds.deepspeed_config`.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


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


def init_distributed() -> None:
    """Start torch.distributed through DeepSpeed; a plain ``python`` run becomes one rank."""
    import deepspeed

    # DeepSpeed still calls collectives that torch 2.13 renamed; the notice is not ours to fix.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    if not torch.distributed.is_initialized():
        from strace_ds.op_build import prebuild_comm_op

        # A start-up killed while DeepSpeed compiles its CPU op must not hang later launches.
        prebuild_comm_op(log=_say_rank0)
        deepspeed.init_distributed(dist_backend=_backend(), verbose=False)


def _say_rank0(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def _backend() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Moved to strace_ds.deepspeed_config; this re-export stays for one release.
from strace_ds.deepspeed_config import (  # noqa: E402, F401
    AUTO,
    load_ds_config,
    resolve_ds_config,
    zero_stage,
)
