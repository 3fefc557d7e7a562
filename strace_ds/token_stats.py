"""Log-probs of the sampled tokens and token entropy over a large vocabulary, in chunks.

For logits ``x`` at one position, temperature ``tau`` and ``z = x / tau`` (``[V]``):

* log-prob of the sampled token ``y``:  ``logp(y) = z_y - lse(z)``, ``lse(z) = log sum_v exp z_v``;
* entropy: ``H = lse(z) - sum_v p_v z_v = -sum_v p_v log p_v`` with ``p = softmax(z)``
  (evaluated as ``-sum_v p_v log p_v``: every term is >= 0, so no cancellation between two
  numbers of size ``lse``).

Gradients (``d/dx = (1/tau) d/dz``):

* ``d logp(y) / d z_v = [v == y] - p_v``;
* ``d H / d z_v = -p_v (log p_v + H)``.

With ``V = 151,936`` (Qwen) one float32 ``[N, V]`` tensor is 2.5 GB at ``N = 4096`` tokens,
and the plain ``log_softmax -> gather`` graph keeps several of them. Here the ``N`` tokens
(all leading dimensions flattened) are processed ``chunk_size`` at a time, so at most two
``[chunk_size, V]`` buffers in the compute dtype exist at once. The backward pass does not
keep the forward's chunks: a custom :class:`torch.autograd.Function` saves only ``lse`` and
``H`` (``[N]``) and recomputes each chunk's probabilities from ``lse``. From hidden states
the chunk logits ``hidden_chunk @ weight.T`` are recomputed too (one extra matmul, the price
of never holding ``[N, V]``); the weight gradient is accumulated over chunks in float32.

The compute dtype is ``promote(input dtype, float32)``: bf16/fp16 inputs are upcast chunk
by chunk, float64 stays float64 (the tests compare to a float64 reference). Both outputs
carry gradients (the entropy is differentiable as well; detach it for selection).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["token_logprobs_and_entropy", "token_logprobs_and_entropy_from_hidden"]


# ----------------------------------------------------------------------------- chunk maths
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _scaled(x: Tensor, cdtype: torch.dtype, temperature: float, owned: bool) -> Tensor:
    """``z = x / tau`` in ``cdtype`` as a buffer this module may overwrite.

    ``owned`` says ``x`` is a temporary of ours (a chunk of recomputed logits), so it is
    reused in place when it already has the compute dtype; a caller's logits are copied.
    """
    z = x if (owned and x.dtype == cdtype) else x.to(cdtype, copy=True)  # [C, V]
    if temperature != 1.0:
        z.div_(temperature)
    return z


def _chunk_forward(
    x: Tensor, tok: Tensor, temperature: float, with_entropy: bool, owned: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``logp(y)``, ``lse`` and ``H`` (or None) of one chunk; ``x [C, V]``, ``tok [C]``.

    Peak memory: two ``[C, V]`` buffers (the shifted logits, turned into ``log p`` in place,
    and ``exp`` of them, turned into ``p`` in place).
    """
    logp = _scaled(x, _compute_dtype(x.dtype), temperature, owned)  # [C, V] holds z
    zmax = logp.amax(dim=-1, keepdim=True)  # [C, 1]
    logp.sub_(zmax)  # z - max z
    p = torch.exp(logp)  # [C, V] unnormalised
    sumexp = p.sum(dim=-1, keepdim=True)  # [C, 1]
    log_sumexp = sumexp.log()  # [C, 1]
    logp.sub_(log_sumexp)  # log p
    lse = (zmax + log_sumexp).squeeze(-1)  # [C]
    token_logp = logp.gather(-1, tok[:, None]).squeeze(-1)  # [C]
    entropy = None
    if with_entropy:
        p.div_(sumexp)  # softmax
        # H = -sum_v p_v log p_v as a batched dot product (no third [C, V] buffer).
        entropy = -torch.bmm(p[:, None, :], logp[:, :, None]).view(-1)  # [C]
    return token_logp, lse, entropy


def _chunk_grad_z(
    x: Tensor,
    tok: Tensor,
    lse: Tensor,
    entropy: Tensor | None,
    g_logp: Tensor | None,
    g_entropy: Tensor | None,
    temperature: float,
    owned: bool,
) -> Tensor:
    """Gradient w.r.t. the chunk's logits ``x [C, V]``, in the compute dtype.

    ``grad_x_v = (1/tau) * ( g_logp * ([v == y] - p_v) - g_H * p_v (log p_v + H) )``
    ``         = -(p_v / tau) * (g_logp + g_H (log p_v + H)) + [v == y] g_logp / tau``.
    """
    cdtype = _compute_dtype(x.dtype)
    logp = _scaled(x, cdtype, temperature, owned).sub_(lse[:, None])  # [C, V] log p
    C = x.shape[0]
    g_logp = torch.zeros(C, dtype=cdtype, device=x.device) if g_logp is None else g_logp
    g_logp = g_logp.to(cdtype) / temperature  # [C]
    if g_entropy is None:
        grad = logp.exp_().mul_(-g_logp[:, None])  # -p g / tau, reusing the buffer
    else:
        assert entropy is not None
        g_entropy = g_entropy.to(cdtype) / temperature  # [C]
        p = torch.exp(logp)  # [C, V]
        weight = logp.add_(entropy[:, None]).mul_(g_entropy[:, None]).add_(g_logp[:, None])
        grad = p.mul_(weight).neg_()
        del weight, logp
    grad.scatter_add_(-1, tok[:, None], g_logp[:, None])
    return grad


# ------------------------------------------------------------------------- logits path
def _flat_view(x3: Tensor) -> Tensor | None:
    """``x3 [B, T, V]`` as a ``[B*T, V]`` view, or None when its strides do not allow one."""
    try:
        return x3.view(-1, x3.shape[-1])
    except RuntimeError:
        return None


def _rows(x3: Tensor, flat: Tensor | None, n0: int, n1: int) -> Tensor:
    """Rows ``n0 .. n1-1`` of ``x3 [B, T, V]`` read as ``[B*T, V]``.

    A view when possible; otherwise (e.g. ``logits[:, :-1]``) a copy of only those rows.
    """
    if flat is not None:
        return flat[n0:n1]
    T = x3.shape[1]
    pieces = []
    n = n0
    while n < n1:
        b, t = divmod(n, T)
        t_end = min(T, t + n1 - n)
        pieces.append(x3[b, t:t_end])
        n += t_end - t
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class _LogprobEntropyFromLogits(torch.autograd.Function):
    """Chunked ``logp(y)`` and ``H`` from logits ``[B, T, V]`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, logits3, tokens, temperature, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)
        flat = _flat_view(logits3)
        N = tokens.shape[0]
        cdtype = _compute_dtype(logits3.dtype)
        token_logp = torch.empty(N, dtype=cdtype, device=logits3.device)  # [N]
        lse = torch.empty_like(token_logp)  # [N]
        entropy = torch.empty_like(token_logp) if with_entropy else None  # [N]
        for n0 in range(0, N, chunk_size):
            n1 = min(N, n0 + chunk_size)
            x = _rows(logits3, flat, n0, n1)  # [C, V]
            lp, ls, ent = _chunk_forward(x, tokens[n0:n1], temperature, with_entropy, False)
            token_logp[n0:n1], lse[n0:n1] = lp, ls
            if entropy is not None:
                entropy[n0:n1] = ent
        ctx.save_for_backward(logits3, tokens, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return token_logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        logits3, tokens, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_logp is None and g_entropy is None):
            return None, None, None, None, None
        flat = _flat_view(logits3)
        B, T, V = logits3.shape
        grad = torch.empty(B * T, V, dtype=logits3.dtype, device=logits3.device)  # [N, V]
        for n0 in range(0, B * T, ctx.chunk_size):
            n1 = min(B * T, n0 + ctx.chunk_size)
            grad[n0:n1] = _chunk_grad_z(
                _rows(logits3, flat, n0, n1),
                tokens[n0:n1],
                lse[n0:n1],
                None if entropy is None else entropy[n0:n1],
                None if g_logp is None else g_logp[n0:n1],
                None if g_entropy is None else g_entropy[n0:n1],
                ctx.temperature,
                owned=False,
            )
        return grad.view(B, T, V), None, None, None, None


# ------------------------------------------------------------------------- hidden path
class _LogprobEntropyFromHidden(torch.autograd.Function):
    """Chunked ``logp(y)`` and ``H`` of ``logits = hidden @ weight.T`` without ``[N, V]``."""

    @staticmethod
    def forward(ctx, hidden2, weight, tokens, temperature, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)
        N = tokens.shape[0]
        cdtype = _compute_dtype(hidden2.dtype)
        token_logp = torch.empty(N, dtype=cdtype, device=hidden2.device)  # [N]
        lse = torch.empty_like(token_logp)  # [N]
        entropy = torch.empty_like(token_logp) if with_entropy else None  # [N]
        for n0 in range(0, N, chunk_size):
            n1 = min(N, n0 + chunk_size)
            x = hidden2[n0:n1] @ weight.T  # [C, V] in the input dtype, like an lm_head
            lp, ls, ent = _chunk_forward(x, tokens[n0:n1], temperature, with_entropy, True)
            del x
            token_logp[n0:n1], lse[n0:n1] = lp, ls
            if entropy is not None:
                entropy[n0:n1] = ent
        ctx.save_for_backward(hidden2, weight, tokens, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return token_logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden2, weight, tokens, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w) or (g_logp is None and g_entropy is None):
            return None, None, None, None, None, None
        cdtype = _compute_dtype(hidden2.dtype)
        N = tokens.shape[0]
        grad_h = torch.empty_like(hidden2) if need_h else None  # [N, H]
        # float32 (or float64) accumulator over chunks: bf16 partial sums would lose bits.
        grad_w = torch.zeros(weight.shape, dtype=cdtype, device=weight.device) if need_w else None
        for n0 in range(0, N, ctx.chunk_size):
            n1 = min(N, n0 + ctx.chunk_size)
            h = hidden2[n0:n1]  # [C, H]
            gz = _chunk_grad_z(
                h @ weight.T,  # recomputed chunk logits [C, V]
                tokens[n0:n1],
                lse[n0:n1],
                None if entropy is None else entropy[n0:n1],
                None if g_logp is None else g_logp[n0:n1],
                None if g_entropy is None else g_entropy[n0:n1],
                ctx.temperature,
                owned=True,
            )  # [C, V] in cdtype
            if grad_h is not None:
                grad_h[n0:n1] = gz.to(weight.dtype) @ weight  # [C, H]
            if grad_w is not None:
                grad_w.addmm_(gz.T, h.to(cdtype))  # [V, H] += [V, C] @ [C, H]
            del gz
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


# ---------------------------------------------------------------------------- public API
def _check_options(temperature: float, chunk_size: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (tokens per chunk), got {chunk_size!r}")


def _check_tokens(tokens: Tensor, lead_shape: torch.Size, vocab: int, name: str) -> None:
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens must be a tensor, got {type(tokens).__name__}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
    if tokens.shape != lead_shape:
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} must equal {name} shape without its last "
            f"dimension, {tuple(lead_shape)}"
        )
    if tokens.numel() and (tokens.min().item() < 0 or tokens.max().item() >= vocab):
        raise ValueError(f"tokens must lie in [0, {vocab}) (the vocabulary size V)")


def _check_float(x: Tensor, name: str, shape_doc: str) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape {shape_doc}, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point (bf16, fp16, fp32, fp64), got {x.dtype}")


def token_logprobs_and_entropy(
    logits: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each sampled token and the entropy of each position, from logits.

    ``z = logits / temperature``; ``logp_t = z_t[y_t] - lse(z_t)``;
    ``H_t = -sum_v softmax(z_t)_v log softmax(z_t)_v``; computed ``chunk_size`` tokens at a
    time (module docstring), so at most two ``[chunk_size, V]`` float32 buffers exist besides
    the gradient ``[..., T, V]`` that the backward pass returns for ``logits``.

    Args:
        logits: ``[..., T, V]`` any float dtype (bf16 is upcast per chunk). Non-contiguous
            inputs such as ``logits[:, :-1]`` are read without copying them whole.
        tokens: ``[..., T]`` integer ids in ``[0, V)`` (the sampled tokens).
        temperature: ``tau > 0``; use the sampling temperature so the log-probs are those
            of the distribution the tokens were drawn from.
        chunk_size: tokens per chunk (all leading dimensions flattened).
        with_entropy: also return ``H`` (skipping it saves one normalisation per chunk).

    Returns:
        ``(logprobs, entropy)``, each ``[..., T]`` in float32 (float64 for float64 input);
        ``entropy`` is None when ``with_entropy=False``. Both carry gradients to ``logits``.
    """
    _check_float(logits, "logits", "[..., T, V]")
    _check_options(temperature, chunk_size)
    _check_tokens(tokens, logits.shape[:-1], logits.shape[-1], "logits")
    lead = tokens.shape  # [..., T]
    logits3 = logits.flatten(0, -3) if logits.dim() > 2 else logits.unsqueeze(0)  # [B, T, V]
    token_logp, entropy = _LogprobEntropyFromLogits.apply(
        logits3, tokens.reshape(-1), float(temperature), chunk_size, bool(with_entropy)
    )
    return token_logp.view(lead), None if entropy is None else entropy.view(lead)


def token_logprobs_and_entropy_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs_and_entropy` for ``logits = hidden @ weight.T`` (an lm_head).

    Each chunk's logits ``[chunk_size, V]`` are computed on the fly in the input dtype and
    recomputed in the backward pass, so neither pass holds logits for all tokens. Gradients
    w.r.t. ``hidden`` and ``weight`` equal those of the plain computation; the weight
    gradient is summed over chunks in float32 and cast to ``weight.dtype`` at the end.

    Args:
        hidden: ``[..., T, H]`` final hidden states (after the last norm).
        weight: ``[V, H]`` output embedding (no bias), same dtype as ``hidden``.
        tokens: ``[..., T]`` integer ids in ``[0, V)``.
        temperature, chunk_size, with_entropy: as in :func:`token_logprobs_and_entropy`.

    Returns:
        ``(logprobs, entropy)``, each ``[..., T]`` float32 (float64 for float64 input).
    """
    _check_float(hidden, "hidden", "[..., T, H]")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape [V, H], got {shape}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight [V, H] = {tuple(weight.shape)} must have H = hidden.shape[-1] = "
            f"{hidden.shape[-1]}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    _check_options(temperature, chunk_size)
    _check_tokens(tokens, hidden.shape[:-1], weight.shape[0], "hidden")
    lead = tokens.shape  # [..., T]
    hidden2 = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    token_logp, entropy = _LogprobEntropyFromHidden.apply(
        hidden2, weight, tokens.reshape(-1), float(temperature), chunk_size, bool(with_entropy)
    )
    return token_logp.view(lead), None if entropy is None else entropy.view(lead)
