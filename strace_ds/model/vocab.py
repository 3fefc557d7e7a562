"""The vocabulary size of a policy: one reader for a loaded model and for a model on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from strace_ds.model.fused_head import unwrap_model


def vocab_size(model: Any) -> int | None:
    """``V`` of a causal LM.

    A loaded (possibly DeepSpeed-wrapped) model: its output head's rows (what the logits
    have), else ``config.vocab_size``. A local directory or a hub id: ``vocab_size`` of its
    ``config.json`` (``text_config``'s for multimodal configs), read from the directory or
    the local Hugging Face cache, never downloaded; None when it cannot be read.
    """
    if isinstance(model, torch.nn.Module):
        hf = unwrap_model(model)
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        if isinstance(head, torch.nn.Linear):
            return head.out_features
        return int(hf.config.vocab_size)
    return _config_vocab_size(model)


def _config_vocab_size(model: str | Path | None) -> int | None:
    if not model:
        return None
    try:
        path = Path(model).expanduser() / "config.json"
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model), "config.json")
            if not isinstance(cached, str):
                return None
            path = Path(cached)
        config = json.loads(path.read_text())
        size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    except Exception:  # noqa: BLE001 - an unreadable config just leaves the size unknown
        return None
    ok = isinstance(size, int) and not isinstance(size, bool) and size > 0
    return size if ok else None
