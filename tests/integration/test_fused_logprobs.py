"""The fused answer log-probs (``strace_ds.model.fused_head``) against the full-logits path.

Same log-probs, entropies and parameter gradients on the tiny Qwen3 policy (tied and untied
head, float32 and float64), the same ZeRO-3 gradients through a real one-rank DeepSpeed
engine, and no ``[N, R, V]`` tensor in the forward or the backward pass.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from strace_ds.model.batch import RolloutBatch, collate_rollouts
from strace_ds.model.logprobs import answer_logprobs
from strace_ds.rollout.base import Generation

TEMPERATURE = 0.7


def _load(policy_dir, tied: bool, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(policy_dir)
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_pretrained(policy_dir, config=config, dtype=dtype)
    if not tied:  # the checkpoint has no separate head: start it near the embedding
        gen = torch.Generator().manual_seed(0)
        emb = model.get_input_embeddings().weight
        noise = torch.randn(emb.shape, generator=gen, dtype=emb.dtype)
        with torch.no_grad():
            model.lm_head.weight.copy_(emb + 0.02 * noise)
    head = model.get_output_embeddings().weight
    assert (head is model.get_input_embeddings().weight) == tied
    return model.eval()  # no dropout either way; eval keeps the comparison deterministic


def _batch(vocab: int, rows: int = 4, seed: int = 0) -> RolloutBatch:
    """Mixed prompt and answer lengths (one empty answer), so both paddings are exercised."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens, answer_lens = [5, 9, 3, 7][:rows], [23, 0, 40, 11][:rows]
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    answers = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in answer_lens]
    generation = Generation(
        prompt_index=list(range(rows)),
        token_ids=answers,
        logprobs=[[0.0] * len(a) for a in answers],
        finish_reasons=["length"] * rows,
    )
    return collate_rollouts(prompts, generation, pad_token_id=0)


def _loss(logp: Tensor, batch: RolloutBatch) -> Tensor:
    """A policy-gradient-shaped loss: advantage-weighted log-probs over the answer tokens."""
    adv = torch.linspace(-1.0, 2.0, len(batch), dtype=logp.dtype)[:, None]  # [N, 1]
    return -(logp * adv * batch.response_mask).sum() / batch.response_mask.sum()


def _rel(got: Tensor, want: Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _grads(model, batch, fused: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
    logp, entropy = answer_logprobs(model, batch, TEMPERATURE, chunk_size=7, fused=fused)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(logp, batch), params)
    return logp.detach(), entropy, list(grads)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("tied", [True, False])
def test_fused_matches_full_logits(tiny_policy, tied, dtype, tol) -> None:
    model = _load(tiny_policy, tied, dtype)
    batch = _batch(model.config.vocab_size)
    want_lp, want_ent, want_g = _grads(model, batch, fused=False)
    got_lp, got_ent, got_g = _grads(model, batch, fused=True)
    assert got_lp.dtype == got_ent.dtype == dtype and not got_ent.requires_grad
    assert _rel(got_lp, want_lp) <= tol and _rel(got_ent, want_ent) <= tol
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, got, want in zip(names, got_g, want_g):
        assert float(want.norm()) > 0, f"{name}: a zero gradient proves nothing"
        assert _rel(got, want) <= tol, f"{name}: {_rel(got, want)}"


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor any op returns (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, Tensor)]
        return out


def _largest_vocab_tensor(model, batch, fused: bool) -> int:
    """Most elements of any tensor with a vocabulary-sized dimension in one forward+backward,
    the head's weight and its gradient ``[V, H]`` (or transposed) aside."""
    weight_shape = sorted(model.lm_head.weight.shape)
    with _Shapes() as log:
        logp, _ = answer_logprobs(model, batch, chunk_size=4, fused=fused)
        _loss(logp, batch).backward()
    sizes = [torch.Size(s).numel() for s in log.shapes
             if model.config.vocab_size in s and sorted(s) != weight_shape]  # fmt: skip
    return max(sizes, default=0)


def test_fused_never_holds_logits_of_all_answer_tokens(tiny_policy) -> None:
    model = _load(tiny_policy, tied=False, dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    N, R, V = *batch.response_ids.shape, model.config.vocab_size
    assert _largest_vocab_tensor(model, batch, fused=False) >= N * R * V  # the detector works
    assert _largest_vocab_tensor(model, batch, fused=True) <= 4 * V  # one chunk of 4 tokens


def test_models_that_change_their_logits_fall_back(tiny_policy) -> None:
    model = _load(tiny_policy, tied=True, dtype=torch.float64)
    model.config.final_logit_softcapping = 30.0  # Qwen3 ignores it: only the check sees it
    batch = _batch(model.config.vocab_size)
    with pytest.warns(UserWarning, match="final_logit_softcapping"):
        got, _ = answer_logprobs(model, batch, fused=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want, _ = answer_logprobs(model, batch, fused=False)
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------- ZeRO-3
def _zero3_engine(model: torch.nn.Module):
    import deepspeed

    from strace_ds.distributed import init_distributed

    init_distributed()
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        # lr 0: engine.step only clears the gradients, so every backward sees the same weights.
        "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "weight_decay": 0.0,
                                                  "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_prefetch_bucket_size": 5e7},
        "steps_per_print": 10**9,
    }  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)  # fmt: skip
    return engine


def _zero3_backward(engine, batch, fused: bool) -> tuple[Tensor, Tensor]:
    """Log-probs and the full reduced gradient (all parameters, flat) of one ZeRO-3 backward."""
    from deepspeed.utils import safe_get_full_grad

    logp, _ = answer_logprobs(engine, batch, TEMPERATURE, chunk_size=7, fused=fused)
    engine.backward(_loss(logp, batch))
    grad = torch.cat([safe_get_full_grad(p).flatten() for p in engine.module.parameters()])
    engine.step()
    return logp.detach(), grad


@pytest.mark.parametrize("tied", [True, False])
def test_fused_matches_full_logits_under_zero3(tiny_policy, tied) -> None:
    engine = _zero3_engine(_load(tiny_policy, tied, torch.float32).train())
    assert hasattr(engine.module.lm_head.weight, "ds_id")  # really partitioned
    batch = _batch(engine.module.config.vocab_size)
    want_lp, want_g = _zero3_backward(engine, batch, fused=False)
    assert float(want_g.norm()) > 1e-3
    # Twice: the second fused step runs on ZeRO-3's prefetch trace of the first.
    for _ in range(2):
        got_lp, got_g = _zero3_backward(engine, batch, fused=True)
        assert _rel(got_lp, want_lp) <= 1e-5 and _rel(got_g, want_g) <= 1e-5
    engine.eval()
    with torch.no_grad():  # the trainer's scoring pass (the head returns (logp, None))
        scored, none = answer_logprobs(engine, batch, TEMPERATURE, with_entropy=False)
    assert none is None and _rel(scored, want_lp) <= 1e-5


def test_autocast_takes_the_full_logits(tiny_policy) -> None:
    model = _load(tiny_policy, tied=True, dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(UserWarning, match="autocast"):
            got, _ = answer_logprobs(model, batch, fused=True)
        want, _ = answer_logprobs(model, batch, fused=False)
    assert _rel(got, want) <= 1e-6  # the same bf16 logits, by the same F.linear
