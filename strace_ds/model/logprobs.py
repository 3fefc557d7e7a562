"""The policy forward that scores a :class:`~strace_ds.model.batch.RolloutBatch`.

The batch holds ``[left-padded prompt (P) | right-padded answer (R)]`` rows; the forward does
not run that layout (its mask would make attention pay for every padded score) but the rows
re-laid by :func:`strace_ds.model.packing.pack_rows`, one per bin or packed, without a mask,
and the ``[N, R]`` outputs go back to the batch's answer layout.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from strace_ds.model.batch import RolloutBatch, collate_rollouts
from strace_ds.model.fused_head import (
    fused_answer_logprobs,
    fused_unsupported_reason,
    unwrap_model,
)
from strace_ds.model.logprob_kernels import token_logprobs_and_entropy
from strace_ds.model.packing import PackedRows, pack_rows
from strace_ds.model.vocab import vocab_size


def answer_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    chunk_size: int = 0,
    with_entropy: bool = True,
    fused: bool = True,
    entropy_grad: bool = False,
    packed: bool | PackedRows = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, R]`` of the answer tokens (and entropies ``[N, R]``) under ``model``.

    ``model`` is a DeepSpeed engine (ZeRO-3 included) or a plain Hugging Face causal LM. The
    rows run without an attention mask, laid out by :func:`strace_ds.model.packing.pack_rows`:
    one row per bin by default (each row from column 0, its padding after it, so the decoder's
    attention is plain causal attention), or, ``packed``, several rows per bin, padding-free
    (``True``, or the caller's own packing of ``batch``) for the price of the longest row per
    bin instead of per row. Either way the outputs are the masked padded layout's to rounding,
    ``[N, R]``, 0 on padding. Fused (the default, :mod:`strace_ds.model.fused_head`): the
    decoder's hidden states of the answer-predicting positions are scored against the output
    embedding in chunks, so no ``[N, R, V]`` logits exist in the forward or the backward pass.
    Unfused (``fused=False``, or a model whose logits are not ``hidden @ weight.T``, with a
    warning naming why): the logits of the columns from the first answer-predicting one on are
    computed (``logits_to_keep``) and the log-softmax/entropy run in chunks over the predicting
    ones (:mod:`strace_ds.model.logprob_kernels`). The two agree to rounding. Entropies are
    detached unless ``entropy_grad`` (an entropy bonus in the loss).
    """
    device = next(model.parameters()).device
    if chunk_size <= 0:  # auto: about 2**25 logits per chunk (220 tokens at V = 152k)
        chunk_size = max(16, (1 << 25) // vocab_size(model))
    pack = packed if isinstance(packed, PackedRows) else pack_rows(batch, share_bins=packed)
    inputs = {  # attention_mask None: the decoder attends within each run of positions
        "input_ids": pack.input_ids.to(device),
        "attention_mask": None,
        "position_ids": pack.position_ids.to(device),
    }
    response_ids = pack.targets.to(device).unsqueeze(0)  # [1, M]
    predict_index = pack.predict_index.to(device)
    reason = fused_unsupported_reason(model) if fused else None
    if reason is not None:
        warnings.warn(f"answer_logprobs: unfused path, {reason}", stacklevel=2)
    if fused and reason is None:
        logp, entropy = fused_answer_logprobs(
            model, **inputs, response_ids=response_ids, temperature=temperature,
            chunk_size=chunk_size, with_entropy=with_entropy, predict_index=predict_index,
        )  # fmt: skip
    else:
        B, W = pack.input_ids.shape
        columns = predict_index % W
        first = int(columns.min()) if len(columns) else W - 1
        keep = W - first  # the columns from the first predicting one on
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # [B, keep, V]
        index = predict_index // W * keep + columns - first
        logits = logits.reshape(-1, logits.shape[-1])[index][None]  # [1, M, V]
        logp, entropy = token_logprobs_and_entropy(
            logits,
            response_ids,
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )
    logp = pack.unpack(logp[0])
    entropy = None if entropy is None else pack.unpack(entropy[0])
    return logp, (entropy.detach() if entropy is not None and not entropy_grad else entropy)


@torch.no_grad()
def packing_unsupported_reason(model: torch.nn.Module, atol: float = 1e-3) -> str | None:
    """Why ``packed=True`` would not give ``model``'s padded log-probs, or None when it does.

    Packing relies on the decoder attending only within each run of consecutive position ids
    when it gets no attention mask (Hugging Face's ``masking_utils`` does, for eager, SDPA,
    flex and flash attention); a model with its own masking would let packed rows see each
    other. Checked, not assumed: three rows of 2 to 5 tokens are scored padded and packed (two
    share a bin) and must agree within ``atol``. Every rank must call it (a forward of
    ``model``), in eval mode; ``model``'s mode is restored.
    """
    training = model.training
    model.eval()
    vocab = vocab_size(model) or 13  # ids 1..12, kept inside any vocabulary
    # rows of 5, 2 and 3 tokens: bins of 5, the last two rows share one
    prompts = [[1 % vocab, 2 % vocab], [3 % vocab], [4 % vocab, 5 % vocab]]
    answers = [[7 % vocab, 8 % vocab, 9 % vocab], [10 % vocab], [11 % vocab]]
    generation = SimpleNamespace(  # the fields of a rollout Generation that collate reads
        prompt_index=[0, 1, 2], token_ids=answers, logprobs=[[0.0] * len(a) for a in answers]
    )
    batch = collate_rollouts(prompts, generation, pad_token_id=0)
    try:
        padded = answer_logprobs(model, batch, with_entropy=False)[0]
        packed = answer_logprobs(model, batch, with_entropy=False, packed=True)[0]
    finally:
        model.train(training)
    gap = float((padded - packed).abs()[batch.response_mask].max())
    if not gap <= atol:
        return (
            f"{type(unwrap_model(model)).__name__} gives other log-probs packed than padded "
            f"(max difference {gap:.3g}): its attention does not stay within each row"
        )
    return None
