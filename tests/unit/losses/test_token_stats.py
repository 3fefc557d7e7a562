"""Chunked log-probs and entropy against the plain log_softmax/gather computation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from strace_ds.model.logprob_kernels import (
    _backward_tiles,
    token_logprobs_and_entropy,
    token_logprobs_and_entropy_from_hidden,
)

TOL = 1e-10


def naive_logprobs_and_entropy(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Reference: full softmax over the vocabulary, in the dtype of ``logits``."""
    logp = torch.log_softmax(logits / temperature, dim=-1)  # [..., T, V]
    token_logp = logp.gather(-1, tokens[..., None]).squeeze(-1)  # [..., T]
    entropy = -(logp.exp() * logp).sum(-1)  # [..., T]
    return token_logp, entropy


def _inputs(shape: tuple[int, ...], V: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    # Scale 3 gives peaked and flat rows alike (entropies from ~0.5 to ~3 nats).
    logits = (3 * torch.randn(*shape, V, generator=gen, dtype=dtype)).requires_grad_()
    tokens = torch.randint(0, V, shape, generator=gen)
    g_logp = torch.randn(shape, generator=gen, dtype=dtype)
    g_ent = torch.randn(shape, generator=gen, dtype=dtype)
    return logits, tokens, g_logp, g_ent


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 35, 1024])  # 35 = all tokens; 4, 7 don't divide
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("shape", [(35,), (5, 7), (1, 5, 7)])
def test_logits_path_values_and_gradients_match_naive(chunk_size, temperature, shape) -> None:
    logits, tokens, g_logp, g_ent = _inputs(shape, V=23, seed=chunk_size)
    lp, ent = token_logprobs_and_entropy(logits, tokens, temperature, chunk_size)
    ref_lp, ref_ent = naive_logprobs_and_entropy(logits, tokens, temperature)
    assert lp.shape == ent.shape == shape and lp.dtype == torch.float64
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=TOL)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=TOL)
    # Gradient of log-probs alone, entropy alone, and both together.
    for use_lp, use_ent in [(True, False), (False, True), (True, True)]:
        out = (lp * g_logp).sum() * use_lp + (ent * g_ent).sum() * use_ent
        ref = (ref_lp * g_logp).sum() * use_lp + (ref_ent * g_ent).sum() * use_ent
        (grad,) = torch.autograd.grad(out, logits, retain_graph=True)
        (ref_grad,) = torch.autograd.grad(ref, logits, retain_graph=True)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=TOL)


def test_logits_path_reads_shifted_non_contiguous_logits() -> None:
    # The usual next-token shift logits[:, :-1] has no flat [B*T, V] view; chunks of 4 cross
    # row boundaries (T = 6), so rows are stitched from two sequences.
    logits, tokens, g_logp, _ = _inputs((3, 7), V=11, seed=3)
    shifted, targets = logits[:, :-1], tokens[:, 1:]
    lp, _ = token_logprobs_and_entropy(shifted, targets, chunk_size=4, with_entropy=False)
    ref_lp, _ = naive_logprobs_and_entropy(shifted, targets)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=TOL)
    (grad,) = torch.autograd.grad((lp * g_logp[:, 1:]).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref_lp * g_logp[:, 1:]).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=TOL)
    assert torch.equal(grad[:, -1], torch.zeros(3, 11, dtype=torch.float64))


def test_without_entropy_returns_none() -> None:
    logits, tokens, _, _ = _inputs((2, 3), V=5, seed=0)
    lp, ent = token_logprobs_and_entropy(logits, tokens, with_entropy=False)
    assert ent is None
    torch.testing.assert_close(lp, naive_logprobs_and_entropy(logits, tokens)[0], rtol=0, atol=TOL)


def test_entropy_hand_computed() -> None:
    # Uniform logits over V = 4: H = log 4, and logp of any token = -log 4.
    # Logits [0, log 3, -1e9, -1e9]: p = [1/4, 3/4, 0, 0], logp of token 1 = log 3/4,
    #   H = -(1/4 log 1/4 + 3/4 log 3/4) = 0.5623351446188083.
    logits = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0986122886681098, -1e9, -1e9]], dtype=torch.float64
    )
    lp, ent = token_logprobs_and_entropy(logits, torch.tensor([2, 1]))
    torch.testing.assert_close(
        ent,
        torch.tensor([1.3862943611198906, 0.5623351446188083], dtype=torch.float64),
        rtol=0,
        atol=TOL,
    )
    torch.testing.assert_close(
        lp,
        torch.tensor([-1.3862943611198906, -0.2876820724517809], dtype=torch.float64),
        rtol=0,
        atol=TOL,
    )


def _hidden_inputs(shape: tuple[int, ...], V: int, H: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, H, generator=gen, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=gen, dtype=dtype) / H**0.5 * 3).requires_grad_()
    tokens = torch.randint(0, V, shape, generator=gen)
    g_logp = torch.randn(shape, generator=gen, dtype=dtype)
    g_ent = torch.randn(shape, generator=gen, dtype=dtype)
    return hidden, weight, tokens, g_logp, g_ent


@pytest.mark.parametrize("chunk_size", [1, 5, 14, 64])  # N = 14 tokens
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_hidden_path_values_and_gradients_match_naive(chunk_size, temperature) -> None:
    hidden, weight, tokens, g_logp, g_ent = _hidden_inputs((2, 7), V=37, H=8, seed=chunk_size)
    lp, ent = token_logprobs_and_entropy_from_hidden(
        hidden, weight, tokens, temperature, chunk_size
    )
    ref_lp, ref_ent = naive_logprobs_and_entropy(hidden @ weight.T, tokens, temperature)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=TOL)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=TOL)
    for use_lp, use_ent in [(True, False), (False, True), (True, True)]:
        out = (lp * g_logp).sum() * use_lp + (ent * g_ent).sum() * use_ent
        ref = (ref_lp * g_logp).sum() * use_lp + (ref_ent * g_ent).sum() * use_ent
        grads = torch.autograd.grad(out, (hidden, weight), retain_graph=True)
        ref_grads = torch.autograd.grad(ref, (hidden, weight), retain_graph=True)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    ("chunk_size", "tiles"),
    [
        (1, (2, 1024)),  # budget 3000 elements: vocabulary slices of 1024, 2 tokens at a time
        (5, (14, 1071)),  # budget 15000: all 14 tokens, vocabulary slices of 1071
        (300, (14, 3000)),  # one tile
    ],
)
def test_hidden_path_backward_tiles_over_the_vocabulary(chunk_size, tiles) -> None:
    # V = 3000 > _MIN_VOCAB_TILE, so the backward cuts the vocabulary (and, for chunk_size=1,
    # the tokens too); the sampled tokens fall in different vocabulary slices.
    hidden, weight, tokens, g_logp, g_ent = _hidden_inputs((2, 7), V=3000, H=8, seed=4)
    assert _backward_tiles(14, 3000, chunk_size) == tiles
    lp, ent = token_logprobs_and_entropy_from_hidden(
        hidden, weight, tokens, 0.9, chunk_size=chunk_size
    )
    ref_lp, ref_ent = naive_logprobs_and_entropy(hidden @ weight.T, tokens, 0.9)
    out = (lp * g_logp).sum() + (ent * g_ent).sum()
    ref = (ref_lp * g_logp).sum() + (ref_ent * g_ent).sum()
    grads = torch.autograd.grad(out, (hidden, weight))
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=TOL)


def test_hidden_path_gradient_for_one_input_only() -> None:
    hidden, weight, tokens, g_logp, _ = _hidden_inputs((9,), V=13, H=4, seed=1)
    frozen = weight.detach()
    lp, _ = token_logprobs_and_entropy_from_hidden(hidden, frozen, tokens, chunk_size=4)
    (grad,) = torch.autograd.grad((lp * g_logp).sum(), hidden)
    ref_lp, _ = naive_logprobs_and_entropy(hidden @ frozen.T, tokens)
    (ref_grad,) = torch.autograd.grad((ref_lp * g_logp).sum(), hidden)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=TOL)


def test_backward_saves_no_vocabulary_sized_tensor() -> None:
    # The graph may keep the inputs and [N] statistics, never [N, V] logits or probabilities.
    hidden, weight, tokens, _, _ = _hidden_inputs((3, 5), V=101, H=6, seed=2)
    saved: list[int] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs_and_entropy_from_hidden(hidden, weight, tokens, chunk_size=4)
    N = 15
    assert sorted(saved) == sorted([hidden.numel(), weight.numel(), N, N, N])

    logits, tokens, _, _ = _inputs((3, 5), V=101, seed=2)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs_and_entropy(logits, tokens, chunk_size=4)
    assert sorted(saved) == sorted([N, N, N, logits.numel()])  # logits: the input itself


@pytest.mark.parametrize("entropy_grad", [False, True])  # the two backward paths
def test_bf16_logits_close_to_float32_reference(entropy_grad: bool) -> None:
    logits, tokens, g_logp, g_ent = _inputs((4, 33), V=257, seed=5, dtype=torch.float32)
    logits_bf16 = logits.detach().bfloat16().requires_grad_()
    lp, ent = token_logprobs_and_entropy(logits_bf16, tokens, 0.8, chunk_size=16)
    assert lp.dtype == ent.dtype == torch.float32
    # Reference in float32 on the same (bf16-rounded) logits: only the upcast differs.
    ref_in = logits_bf16.detach().float().requires_grad_()
    ref_lp, ref_ent = naive_logprobs_and_entropy(ref_in, tokens, 0.8)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=2e-5)
    (grad,) = torch.autograd.grad(
        (lp * g_logp).sum() + (ent * g_ent).sum() * entropy_grad, logits_bf16
    )
    ref_out = (ref_lp * g_logp).sum() + (ref_ent * g_ent).sum() * entropy_grad
    (ref_grad,) = torch.autograd.grad(ref_out, ref_in)
    assert grad.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: relative 2**-8 on each entry of the gradient.
    torch.testing.assert_close(grad.float(), ref_grad, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("entropy_grad", [False, True])  # the two backward paths
@pytest.mark.parametrize(
    ("V", "chunk_size"),
    [(301, 8), (2100, 40)],  # token tiles summed per weight block; two vocabulary tiles
)
def test_bf16_hidden_close_to_float32_reference(
    V: int, chunk_size: int, entropy_grad: bool
) -> None:
    hidden, weight, tokens, g_logp, g_ent = _hidden_inputs(
        (3, 20), V=V, H=32, seed=6, dtype=torch.float32
    )
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    lp, ent = token_logprobs_and_entropy_from_hidden(h16, w16, tokens, chunk_size=chunk_size)
    h32 = h16.detach().float().requires_grad_()
    w32 = w16.detach().float().requires_grad_()
    ref_lp, ref_ent = naive_logprobs_and_entropy(h32 @ w32.T, tokens)
    # The chunk logits are a bf16 matmul (as an lm_head in bf16 would give): ~2**-8 relative.
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=0.05)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=0.05)
    out = (lp * g_logp).sum() + (ent * g_ent).sum() * entropy_grad
    ref_out = (ref_lp * g_logp).sum() + (ref_ent * g_ent).sum() * entropy_grad
    gh, gw = torch.autograd.grad(out, (h16, w16))
    rh, rw = torch.autograd.grad(ref_out, (h32, w32))
    assert gh.dtype == gw.dtype == torch.bfloat16
    # Relative error of the whole gradient: bf16 rounding gives ~2**-8; a wrong term gives ~1.
    for g, r in [(gh, rh), (gw, rw)]:
        rel = (g.float() - r).norm() / r.norm()
        assert rel < 0.02, rel


def test_empty_sequence() -> None:
    logits = torch.zeros(2, 0, 5, requires_grad=True)
    lp, ent = token_logprobs_and_entropy(logits, torch.zeros(2, 0, dtype=torch.long))
    assert lp.shape == ent.shape == (2, 0)
    hidden = torch.zeros(2, 0, 4, requires_grad=True)
    lp, _ = token_logprobs_and_entropy_from_hidden(
        hidden, torch.zeros(5, 4), torch.zeros(2, 0, dtype=torch.long)
    )
    (grad,) = torch.autograd.grad(lp.sum(), hidden, allow_unused=True)
    assert grad is None or grad.shape == (2, 0, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": torch.zeros(5)}, r"logits must be a tensor of shape \[\.\.\., T, V\]"),
        ({"logits": torch.zeros(2, 3, dtype=torch.long)}, "floating point"),
        ({"tokens": torch.zeros(3, dtype=torch.long)}, r"tokens shape \(3,\) must equal"),
        ({"tokens": torch.zeros(2, 3)}, "integer dtype"),
        ({"tokens": torch.full((2, 3), 7)}, r"\[0, 7\)"),
        ({"tokens": torch.full((2, 3), -1)}, r"\[0, 7\)"),
        ({"temperature": 0.0}, "temperature must be finite and > 0"),
        ({"temperature": float("inf")}, "temperature must be finite and > 0"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"chunk_size": 2.5}, "chunk_size must be an int >= 1"),
    ],
)
def test_logits_path_bad_input_raises(kwargs, match) -> None:
    args = {
        "logits": torch.zeros(2, 3, 7),
        "tokens": torch.zeros(2, 3, dtype=torch.long),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        token_logprobs_and_entropy(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": torch.zeros(7)}, r"weight must be a tensor of shape \[V, H\]"),
        ({"weight": torch.zeros(7, 5)}, "must have H = hidden.shape"),
        ({"weight": torch.zeros(7, 4, dtype=torch.float64)}, "must share a dtype"),
        ({"hidden": torch.zeros(4)}, r"hidden must be a tensor of shape \[\.\.\., T, H\]"),
        ({"tokens": torch.zeros(2, 4, dtype=torch.long)}, "must equal hidden shape"),
        ({"tokens": torch.full((2, 3), 9)}, r"\[0, 7\)"),
    ],
)
def test_hidden_path_bad_input_raises(kwargs, match) -> None:
    args = {
        "hidden": torch.zeros(2, 3, 4),
        "weight": torch.zeros(7, 4),
        "tokens": torch.zeros(2, 3, dtype=torch.long),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        token_logprobs_and_entropy_from_hidden(**args)
