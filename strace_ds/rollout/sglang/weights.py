"""Moving policy weights to SGLang: streamed HF checkpoints and ``torch.multiprocessing`` handles.

Helpers of :class:`strace_ds.rollout.sglang.SGLangRolloutEngine`'s ``sync_weights``, kept
apart from the HTTP client: :func:`write_hf_checkpoint` (disk path, for
``/update_weights_from_disk``), :func:`publish_atomically`, and :func:`serialize_named_tensors`
/ :func:`tensor_buckets` (tensor path, for ``/update_weights_from_tensor``). No SGLang import:
the serialisation reproduces SGLang 0.5.23's ``MultiprocessingSerializer`` on the client side.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from strace_ds.storage.publish import publish_dir

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
"""Suffixes of weight files, never copied from the base model directory into a new version."""


# --------------------------------------------------------------------------- checkpoints


def _prepare(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = tensor.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.to("cpu").contiguous()


def write_hf_checkpoint(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: str | Path,
    base_model_dir: str | Path | None = None,
    shard_bytes: int = 1 << 30,
    dtype: torch.dtype | None = None,
) -> Path:
    """Stream ``(name, full tensor)`` pairs into a Hugging Face safetensors checkpoint.

    Non-weight files of ``base_model_dir`` (``config.json``, tokenizer, ...) are copied first.
    At most ``shard_bytes`` of tensors are held at once: a single shard is written as
    ``model.safetensors``; several as ``model-0000k-of-0000N.safetensors`` with
    ``model.safetensors.index.json``, as ``save_pretrained`` does. ``out_dir`` must be new or
    empty; use :func:`publish_atomically` for an atomic replace. Returns ``out_dir``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"write_hf_checkpoint: {out} is not empty")
    if base_model_dir is not None:
        for f in sorted(Path(base_model_dir).iterdir()):
            if f.is_file() and not f.name.endswith(WEIGHT_FILES):
                shutil.copy2(f, out / f.name)
    shards: list[tuple[Path, list[str]]] = []
    names_seen: set[str] = set()
    total = 0
    bucket: dict[str, torch.Tensor] = {}
    bucket_bytes = 0

    def flush() -> None:
        nonlocal bucket, bucket_bytes
        if bucket:
            path = out / f".shard-{len(shards):05d}.safetensors"
            save_file(bucket, str(path), metadata={"format": "pt"})
            shards.append((path, list(bucket)))
        bucket, bucket_bytes = {}, 0

    for name, tensor in named_tensors:
        if name in names_seen:
            raise ValueError(f"write_hf_checkpoint: tensor {name!r} given twice")
        names_seen.add(name)
        t = _prepare(tensor, dtype)
        if any(t.data_ptr() == u.data_ptr() for u in bucket.values()):
            t = t.clone()  # safetensors refuses aliased tensors (e.g. tied lm_head/embedding)
        nbytes = t.numel() * t.element_size()
        if bucket and bucket_bytes + nbytes > shard_bytes:
            flush()
        bucket[name] = t
        bucket_bytes += nbytes
        total += nbytes
    flush()
    if not shards:
        raise ValueError("write_hf_checkpoint: no tensors given")
    if len(shards) == 1:
        shards[0][0].rename(out / "model.safetensors")
        return out
    weight_map = {}
    for k, (path, names) in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        path.rename(out / final)
        weight_map.update({name: final for name in names})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def publish_atomically(tmp_dir: Path, final_dir: Path) -> None:
    """``rename(tmp_dir, final_dir)``, replacing an existing ``final_dir`` (same filesystem).

    :func:`strace_ds.storage.publish.publish_dir`: a kill mid-replace leaves the old version at
    ``.v<k>.old``, put back by :func:`strace_ds.storage.publish.recover_dir` or the next publish.
    """
    publish_dir(tmp_dir, final_dir)


# --------------------------------------------------------------------------- tensor handles


def _device_uuid_reducer(tensor: torch.Tensor) -> Any:
    """``reduce_tensor`` with the CUDA device index replaced by its UUID, as SGLang's own
    ``monkey_patch_torch_reductions`` does, so a server with other visible devices maps it."""
    from torch.multiprocessing import reductions

    rebuild, args = reductions.reduce_tensor(tensor)
    if tensor.is_cuda:
        args = (*args[:6], str(torch.cuda.get_device_properties(args[6]).uuid), *args[7:])
    return rebuild, args


def serialize_named_tensors(named_tensors: list[tuple[str, torch.Tensor]]) -> str:
    """Base64 ``ForkingPickler`` bytes of ``[(name, tensor), ...]``: SGLang 0.5.23's
    ``MultiprocessingSerializer.serialize(..., output_str=True)`` without importing SGLang.

    Only handles are pickled (shared-memory file names on CPU, CUDA IPC handles on GPU): the
    tensors must stay alive until the server has loaded them.
    """
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reducers with ForkingPickler)

    buf = io.BytesIO()
    pickler = ForkingPickler(buf)
    if any(t.is_cuda for _, t in named_tensors):
        pickler.dispatch_table[torch.Tensor] = _device_uuid_reducer
        pickler.dispatch_table[torch.nn.Parameter] = _device_uuid_reducer
    pickler.dump(named_tensors)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def tensor_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs into lists of at most ``bucket_bytes`` (one tensor may
    exceed it alone), as contiguous copies safe to share."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        t = tensor.detach()
        # A CPU tensor's storage is moved into shared memory when pickled: work on a copy so
        # the caller's tensor is never touched.
        t = t.clone(memory_format=torch.contiguous_format) if not t.is_cuda else t.contiguous()
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket
