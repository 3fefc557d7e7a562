"""Rollouts as padded tensors, and the policy forward that scores them.

Layout of one batch of ``N`` rows: ``[left-padded prompt (P) | right-padded answer (R)]``, so
every answer starts at column ``P`` and the log-prob of answer token ``j`` comes from the
logits at column ``P + j - 1``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch

from strace_ds.fused_logprobs import fused_answer_logprobs, fused_unsupported_reason, unwrap_model
from strace_ds.rollout.base import Generation
from strace_ds.token_stats import token_logprobs_and_entropy


@dataclass
class RolloutBatch:
    """Padded tensors of ``N`` prompt+answer rows."""

    input_ids: torch.Tensor  # [N, P+R]
    attention_mask: torch.Tensor  # [N, P+R] 0/1
    position_ids: torch.Tensor  # [N, P+R] positions that skip the left padding
    response_ids: torch.Tensor  # [N, R]
    response_mask: torch.Tensor  # [N, R] bool, the valid answer tokens
    rollout_logprobs: torch.Tensor  # [N, R] the rollout engine's log-probs (0 on padding)
    prompt_len: int  # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: slice | torch.Tensor) -> RolloutBatch:
        """The sub-batch of the given rows (same padding)."""
        values = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return RolloutBatch(prompt_len=self.prompt_len, **values)

    def trimmed(self) -> RolloutBatch:
        """The same rows without the columns that are padding in every row.

        Drops leading prompt columns and trailing answer columns (at least one answer column
        stays, as in :func:`collate_rollouts`); positions are unchanged, so log-probs are too.
        A sub-batch of similar lengths (:mod:`strace_ds.micro_batches`) then costs its own
        longest row, not the step's.
        """
        P = self.prompt_len
        mask = self.attention_mask.bool()
        prompt_used = mask[:, :P].any(dim=0)  # [P]
        p0 = int(prompt_used.nonzero()[0]) if prompt_used.any() else P
        answer_used = self.response_mask.any(dim=0).nonzero()  # [R', 1]
        R = int(answer_used[-1]) + 1 if len(answer_used) else 1
        cols = slice(p0, P + R)
        return RolloutBatch(
            input_ids=self.input_ids[:, cols],
            attention_mask=self.attention_mask[:, cols],
            position_ids=self.position_ids[:, cols],
            response_ids=self.response_ids[:, :R],
            response_mask=self.response_mask[:, :R],
            rollout_logprobs=self.rollout_logprobs[:, :R],
            prompt_len=P - p0,
        )


def row_lengths(batch: RolloutBatch) -> torch.Tensor:
    """``[N]`` prompt + answer tokens of each row (without padding)."""
    return batch.attention_mask.sum(dim=1)


def collate_rollouts(
    prompt_ids: list[list[int]], generation: Generation, pad_token_id: int
) -> RolloutBatch:
    """Pad the prompts (left) and answers (right) of ``generation`` into one batch."""
    prompts = [prompt_ids[i] for i in generation.prompt_index]
    P = max(len(p) for p in prompts)
    R = max(1, max(len(a) for a in generation.token_ids))
    N = len(prompts)
    input_ids = torch.full((N, P + R), pad_token_id, dtype=torch.long)
    attention = torch.zeros((N, P + R), dtype=torch.long)
    rollout_lp = torch.zeros((N, R), dtype=torch.float32)
    for i, (prompt, answer, lps) in enumerate(
        zip(prompts, generation.token_ids, generation.logprobs)
    ):
        input_ids[i, P - len(prompt) : P] = torch.tensor(prompt, dtype=torch.long)
        attention[i, P - len(prompt) : P] = 1
        if answer:
            input_ids[i, P : P + len(answer)] = torch.tensor(answer, dtype=torch.long)
            attention[i, P : P + len(answer)] = 1
            rollout_lp[i, : len(answer)] = torch.tensor(lps, dtype=torch.float32)
    position_ids = (attention.cumsum(dim=-1) - 1).clamp_min(0)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        response_ids=input_ids[:, P:].clone(),
        response_mask=attention[:, P:].bool(),
        rollout_logprobs=rollout_lp,
        prompt_len=P,
    )


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
    Fused (the default, :mod:`strace_ds.fused_logprobs`): the decoder's hidden states of the
    ``R`` answer-predicting positions are scored against the output embedding in chunks, so
    no ``[N, R, V]`` logits exist in the forward or the backward pass. Unfused (``fused=False``,
    or a model whose logits are not ``hidden @ weight.T``, with a warning naming why): the
    ``R + 1`` last positions' logits are computed (``logits_to_keep``) and the
    log-softmax/entropy run in chunks over them (:mod:`strace_ds.token_stats`). The two agree
    to rounding. Entropies are detached unless ``entropy_grad`` (an entropy bonus in the loss).
    """
    device = next(model.parameters()).device
    R = batch.response_ids.shape[1]
    if chunk_size <= 0:  # auto: about 2**25 logits per chunk (220 tokens at V = 152k)
        chunk_size = max(16, (1 << 25) // _vocab_size(model))
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


def _vocab_size(model: torch.nn.Module) -> int:
    """``V`` of a (wrapped) causal LM: its output head's rows, else ``config.vocab_size``."""
    hf = unwrap_model(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear):
        return head.out_features
    return int(hf.config.vocab_size)
