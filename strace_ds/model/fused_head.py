"""Answer log-probs from the decoder's hidden states and the output embedding, never the logits.

The unfused path of :func:`strace_ds.model.logprobs.answer_logprobs` asks the model for the
logits of the answer-predicting columns: about ``[N, R, V]`` in the model dtype, kept by
autograd for the backward pass, which then returns a gradient of the same size. At
``V = 151,936`` that is 0.6 GB per 2,048 answer tokens in bf16, twice over, more than the rest
of a small model's step. Here the decoder runs without its head, only the hidden states of the
``M`` answer-predicting positions are kept (``[1, M, H]``), and
:func:`strace_ds.model.logprob_kernels.token_logprobs_and_entropy_from_hidden` scores them against
the head's weight ``[V, H]`` in chunks, in the forward and in the backward pass.

ZeRO-3. The head's weight is partitioned: each rank holds a slice and ``weight.data`` is an
empty placeholder, except while DeepSpeed's hooks on the head *module* hold it gathered,
around that module's forward and its backward. Gathering it by hand
(``deepspeed.zero.GatheredParameters``) is not enough: the weight's gradient reaches its
``AccumulateGrad`` node after the custom backward returns, and by then a hand-made gather
is over and autograd lays the ``[V, H]`` gradient out like the empty placeholder (measured:
"size of tensor a (0) must match ... (128)"). So the head module itself is called, with its
``forward`` redirected to the chunked computation for the duration of the call: ZeRO-3's hooks
then gather the weight (prefetching as for the unfused model, same module trace), attach the
pre-backward gather to the outputs and the post-backward release to the input, and autograd
runs ``AccumulateGrad`` nodes before any other ready node, so the gradient lands, and ZeRO-3's
hook reduce-scatters it, while the weight is still whole, exactly as for an ``nn.Linear``
head. With tied embeddings the head weight is the embedding's Parameter; one
``AccumulateGrad`` sums both uses, as in the unfused model. The root model's ``forward`` is
redirected the same way (decoder, then head), so a DeepSpeed engine's own ``forward`` runs
unchanged around it: timers and ZeRO-3's start- and end-of-forward hooks (TRL calls Liger's
fused losses through such a redirection).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from strace_ds.model.logprob_kernels import (
    token_logprobs_and_entropy,
    token_logprobs_and_entropy_from_hidden,
)

__all__ = ["fused_answer_logprobs", "fused_unsupported_reason", "unwrap_model"]

_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None,  # Gemma 2/3: tanh soft-cap of the logits
    "logit_scale": None,  # Cohere: logits multiplied by a constant
    "logits_scaling": 1.0,  # Granite: logits divided by a constant
}
"""Config attributes whose non-default value means the model changes its logits after the
head (value: the default that leaves them alone); such models take the unfused path."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DeepSpeed engine (``engine.module``), else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def fused_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the fused path cannot reproduce ``model``'s logits, or None when it can.

    It requires a causal LM whose logits are exactly ``decoder(...).last_hidden_state @
    lm_head.weight.T``: a separate decoder module and a bias-free ``nn.Linear`` head, and none
    of the known post-head logit transforms (:data:`_LOGIT_TRANSFORMS`).
    """
    hf = unwrap_model(model)
    get_head, get_decoder = (getattr(hf, name, None) for name in ("get_output_embeddings",
                                                                  "get_decoder"))  # fmt: skip
    if get_head is None or get_decoder is None:
        return f"{type(hf).__name__} has no get_output_embeddings/get_decoder"
    head = get_head()
    if not isinstance(head, torch.nn.Linear):
        return f"the output head is {type(head).__name__}, not nn.Linear"
    if head.bias is not None:
        return "the output head has a bias"
    if get_decoder() is hf:
        return f"{type(hf).__name__} has no decoder module separate from its head"
    config = getattr(hf, "config", None)
    configs = [config]
    if config is not None and hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        for name, default in _LOGIT_TRANSFORMS.items():
            value = getattr(cfg, name, default)
            if value is not None and value != default:
                return f"the model transforms its logits after the head ({name}={value})"
    return None


@contextmanager
def _forward_redirected(module: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside the block (an instance attribute), then restored."""
    before = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if before is None:
            del module.forward
        else:
            module.forward = before


def fused_answer_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor,
    response_ids: Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    predict_index: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[1, M]`` of ``response_ids [1, M]`` and entropies ``[1, M]`` (or None), fused.

    ``input_ids [B, W]`` are rows laid out by :func:`strace_ds.model.packing.pack_rows` and
    ``predict_index [M]`` names the flat positions (into ``B * W``) of the hidden states that
    predict the ``M`` answer tokens; only those states are scored. ``model`` is a DeepSpeed
    engine or a plain Hugging Face causal LM that :func:`fused_unsupported_reason` accepts.
    Both outputs carry gradients (to the decoder and to the head's weight).
    """
    hf = unwrap_model(model)
    decoder, head = hf.get_decoder(), hf.get_output_embeddings()

    def head_forward(hidden: Tensor) -> tuple[Tensor, Tensor | None]:
        """``head``'s forward for one call: scores ``hidden [1, M, H]`` without logits."""
        if hidden.dtype != head.weight.dtype or torch.is_autocast_enabled(hidden.device.type):
            # Autocast: its casts are F.linear's, not the chunked matmuls' (which write into
            # buffers of one dtype); the price is the [1, M, V] logits of the unfused path.
            warnings.warn("answer_logprobs: autocast or mixed dtypes, full logits", stacklevel=2)
            logits = torch.nn.functional.linear(hidden, head.weight)  # [1, M, V]
            return token_logprobs_and_entropy(
                logits, response_ids, temperature, chunk_size, with_entropy
            )
        return token_logprobs_and_entropy_from_hidden(
            hidden, head.weight, response_ids, temperature, chunk_size, with_entropy
        )

    def model_forward(input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor):
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        last = out.last_hidden_state
        hidden = last.reshape(-1, last.shape[-1])[predict_index].unsqueeze(0)  # [1, M, H]
        with _forward_redirected(head, head_forward):
            return head(hidden)

    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "position_ids": position_ids}  # fmt: skip
    with _forward_redirected(hf, model_forward):
        return model(**inputs)  # the engine's forward calls hf's
