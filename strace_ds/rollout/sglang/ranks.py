"""How the trainer uses SGLang with one or several DeepSpeed ranks.

Every rank sends its own prompts to the servers over HTTP. Weight sync is a collective: all
ranks gather the ZeRO-3 shards, rank 0 alone writes the checkpoint and tells the servers to
load it, the ranks meet at a barrier, and only then does every rank expect the new version
(:class:`FollowerSync` on ranks > 0). With ``--sglang-launch`` rank 0 starts the servers and
broadcasts their URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from strace_ds import distributed as dist_utils
from strace_ds.model.vocab import vocab_size
from strace_ds.rollout.base import Generation, SamplingParams


class FollowerSync:
    """A rank > 0's view of the shared SGLang servers: generate yes, write weights no."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Generation:
        return self.engine.generate(prompt_ids, n, sampling)

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        for _ in named_tensors:  # take part in the gathers; rank 0 writes and loads
            pass
        dist_utils.barrier()  # rank 0 has loaded the new weights on every server
        self.engine.weight_version = version

    def close(self) -> None:
        self.engine.close()


class LeaderSync(FollowerSync):
    """Rank 0: writes the weights, loads them on the servers, then releases the other ranks."""

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.engine.sync_weights(named_tensors, version)
        dist_utils.barrier()

    @property
    def last_sync_s(self) -> float | None:
        return getattr(self.engine, "last_sync_s", None)


def build_sglang_rollout(
    rollouts: Any, weights_dir: str | Path, model_path: str, is_main: bool
) -> Any:
    """The SGLang rollout engine for this rank, from the rollouts section's ``sglang_url`` or
    ``sglang_launch``; weight versions are written under ``weights_dir``."""
    from strace_ds.rollout.sglang.engine import SGLangRolloutEngine

    cfg, weights_dir = rollouts, Path(weights_dir)
    # Only rank 0 writes checkpoints, with the base model's config/tokenizer files.
    base_dir = _local_model_dir(model_path) if is_main else model_path
    # Deadlines and retries (--sglang_timeout_s, ...), and the policy's vocabulary size: every
    # answer's token ids are checked against it before they reach the model.
    options = {
        "sync_mode": cfg.sglang_sync,
        "timeout_s": cfg.sglang_timeout_s,
        "max_retries": cfg.sglang_max_retries,
        "max_concurrency": cfg.sglang_max_concurrency,
        "vocab_size": vocab_size(model_path),
    }
    engine = None
    urls = cfg.sglang_url
    if cfg.sglang_launch:
        if is_main:
            engine = SGLangRolloutEngine.launch(
                cfg.sglang_launch,
                model_path,
                weights_dir,
                device=_server_device(),
                base_model_dir=base_dir,
                **options,
            )
            urls = ",".join(engine.urls)
        urls = dist_utils.broadcast_object(urls)
    if engine is None:
        engine = SGLangRolloutEngine(urls, weights_dir, base_model_dir=base_dir, **options)
    single = dist_utils.world_size() == 1
    if single:
        return engine
    return LeaderSync(engine) if is_main else FollowerSync(engine)


def _local_model_dir(model_path: str) -> str:
    """A local directory holding ``model_path``'s config and tokenizer files: the path itself,
    or for a Hugging Face hub id its cached snapshot (non-weight files only; already cached by
    the trainer's own ``from_pretrained``)."""
    if Path(model_path).is_dir():
        return model_path
    from huggingface_hub import snapshot_download

    return snapshot_download(
        model_path, allow_patterns=["*.json", "*.txt", "*.model", "*.py", "*.jinja", "*.tiktoken"]
    )


def _server_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
