"""LoRA adapters (``--lora_rank > 0``) through peft: injected in place, merged for the rollouts.

:func:`inject_lora` adds the adapters to the policy itself (``peft.inject_adapter_in_model``),
so the module keeps its class, its decoder and head (the fused log-prob path) and its names,
with ``<module>.base_layer.weight`` and ``<module>.lora_{A,B}.default.weight`` for each target;
only the adapters train. :func:`merged_named_tensors` turns the gathered parameters back into
the base model's: ``W + (alpha / r) B A`` under the base names, what the rollout engine and the
merged export receive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

QWEN_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
"""The attention and MLP projections of Qwen-style (and Llama-style) decoders."""

ADAPTER = "default"


def target_modules(spec: str) -> str | list[str]:
    """``--lora_target_modules`` as peft takes it: ``'all-linear'`` or a list of names."""
    spec = spec.strip()
    return spec if spec == "all-linear" else [n.strip() for n in spec.split(",") if n.strip()]


def inject_lora(model: torch.nn.Module, rank: int, alpha: float, targets: str) -> Any:
    """Add LoRA adapters of ``rank`` (scale ``alpha / rank``, no dropout) to ``model`` in place
    and freeze everything else; returns the peft ``LoraConfig``."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=target_modules(targets))  # fmt: skip
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return config


def merged_named_tensors(
    named: Iterable[tuple[str, torch.Tensor]], scaling: float
) -> Iterator[tuple[str, torch.Tensor]]:
    """The base model's ``(name, tensor)`` from the adapted model's: each target's
    ``base_layer.weight + scaling * lora_B @ lora_A`` under its base name, other tensors as they
    are. Streams: a target's base weight is held only until its two factors arrive."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        if ".base_layer." in name:
            prefix, _, leaf = name.partition(".base_layer.")
            if leaf != "weight":  # a bias is not adapted
                yield f"{prefix}.{leaf}", tensor
                continue
            pending.setdefault(prefix, {})["W"] = tensor
        elif f".lora_A.{ADAPTER}." in name:
            pending.setdefault(name.partition(".lora_A.")[0], {})["A"] = tensor
        elif f".lora_B.{ADAPTER}." in name:
            pending.setdefault(name.partition(".lora_B.")[0], {})["B"] = tensor
        else:
            yield name, tensor
            continue
        prefix = next(
            p
            for p in (name.partition(s)[0] for s in (".base_layer.", ".lora_A.", ".lora_B."))
            if p != name
        )
        parts = pending[prefix]
        if len(parts) == 3:
            del pending[prefix]
            W, A, B = parts["W"], parts["A"], parts["B"]
            delta = (B.double() @ A.double()) * scaling
            yield f"{prefix}.weight", (W.double() + delta).to(W.dtype)
    if pending:
        raise ValueError(f"LoRA merge: incomplete adapters for {sorted(pending)[:3]}")


def save_adapter(out: Any, adapter: dict[str, torch.Tensor], optim: Any, base: str) -> None:
    """The adapter in peft's format in ``out``: ``adapter_config.json`` and
    ``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_{A,B}.weight``), loadable
    with ``peft.PeftModel.from_pretrained(base_model, out)``."""
    from pathlib import Path

    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(r=optim.lora_rank, lora_alpha=optim.lora_alpha, lora_dropout=0.0,
                        target_modules=target_modules(optim.lora_target_modules),
                        base_model_name_or_path=base, task_type="CAUSAL_LM")  # fmt: skip
    config.save_pretrained(str(out))
    tensors = {"base_model.model." + n.replace(f".{ADAPTER}.", "."): t.contiguous()
               for n, t in adapter.items()}  # fmt: skip
    save_file(tensors, str(out / "adapter_model.safetensors"))
