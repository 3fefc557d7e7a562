"""The policy forward that scores a :class:`~strace_ds.model.batch.RolloutBatch`.

Layout of one batch of ``N`` rows: ``[left-padded prompt (P) | right-padded answer (R)]``, so
every answer starts at column ``P`` and the log-prob of answer token ``j`` comes from the
logits at column ``P + j - 1``.
"""

from __future__ import annotations

import warnings

import torch

from strace_ds.model.batch import RolloutBatch
from strace_ds.model.fused_head import fused_answer_logprobs, fused_unsupported_reason
from strace_ds.model.logprob_kernels import token_logprobs_and_entropy
from strace_ds.model.vocab import vocab_size


def answer_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    chunk_size: int = 0,
    with_entropy: bool = True,
    fused: bool = True,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, R]`` of the answer tokens (and entropies ``[N, R]``) under ``model``.

    ``model`` is a DeepSpeed engine (ZeRO-3 included) or a plain Hugging Face causal LM.
    Fused (the default, :mod:`strace_ds.model.fused_head`): the decoder's hidden states of the
    ``R`` answer-predicting positions are scored against the output embedding in chunks, so
    no ``[N, R, V]`` logits exist in the forward or the backward pass. Unfused (``fused=False``,
    or a model whose logits are not ``hidden @ weight.T``, with a warning naming why): the
    ``R + 1`` last positions' logits are computed (``logits_to_keep``) and the
    log-softmax/entropy run in chunks over them (:mod:`strace_ds.model.logprob_kernels`). The two
    agree to rounding. Entropies are detached unless ``entropy_grad`` (an entropy bonus in the
    loss).
    """
    device = next(model.parameters()).device
    R = batch.response_ids.shape[1]
    if chunk_size <= 0:  # auto: about 2**25 logits per chunk (220 tokens at V = 152k)
        chunk_size = max(16, (1 << 25) // vocab_size(model))
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
        "position_ids": batch.position_ids.to(device),
    }
    response_ids = batch.response_ids.to(device)
    reason = fused_unsupported_reason(model) if fused else None
    if reason is not None:
        warnings.warn(f"answer_logprobs: unfused path, {reason}", stacklevel=2)
    if fused and reason is None:
        logp, entropy = fused_answer_logprobs(
            model, **inputs, response_ids=response_ids, temperature=temperature,
            chunk_size=chunk_size, with_entropy=with_entropy,
        )  # fmt: skip
    else:
        out = model(**inputs, logits_to_keep=R + 1, use_cache=False)
        logp, entropy = token_logprobs_and_entropy(
            out.logits[:, :-1],  # [N, R, V] predicts answer tokens 0..R-1
            response_ids,
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )
    return logp, (entropy.detach() if entropy is not None and not entropy_grad else entropy)
