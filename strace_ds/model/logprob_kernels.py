"""Log-probs of the sampled tokens and token entropy over a large vocabulary, in chunks.

For logits ``x`` at one position, temperature ``tau`` and ``z = x / tau`` (``[V]``):

* log-prob of the sampled token ``y``:  ``logp(y) = z_y - lse(z)``, ``lse(z) = log sum_v exp z_v``;
* entropy: ``H = lse(z) - sum_v p_v z_v = -sum_v p_v log p_v`` with ``p = softmax(z)``,
  evaluated after the max shift ``u = z - max z <= 0`` as ``H = log s - sum_v p_v u_v``
  (``s = sum_v exp u_v``): two terms >= 0, so no cancellation between numbers of size ``lse``.

Gradients (``d/dx = (1/tau) d/dz``):

* ``d logp(y) / d z_v = [v == y] - p_v``;
* ``d H / d z_v = -p_v (log p_v + H)``.

With ``V = 151,936`` (Qwen) one float32 ``[N, V]`` tensor is 2.5 GB at ``N = 4096`` tokens,
and the plain ``log_softmax -> gather`` graph keeps several of them. Here the ``N`` tokens
(all leading dimensions flattened) are processed in tiles of at most ``chunk_size * V``
elements, in two scratch buffers of that size (plus a bf16 one for bf16 input) that every
tile reuses. The backward pass
does not keep the forward's tiles: a custom :class:`torch.autograd.Function` saves only
``lse`` and ``H`` (``[N]``) and recomputes the probabilities ``p = exp(z - lse)`` tile by
tile. From hidden states the logits ``hidden @ weight.T`` are recomputed too (one extra
matmul, the price of never holding ``[N, V]``). Since ``lse`` is known in the backward pass,
its tiles can cut the vocabulary as well as the tokens: each ``weight`` row block then gets
its gradient from one matmul over all tokens, with no ``[V, H]`` float32 accumulator.

The compute dtype is ``promote(input dtype, float32)``: bf16/fp16 inputs are upcast tile
by tile, float64 stays float64 (the tests compare to a float64 reference). Matmuls run in
the input dtype, as an lm_head would. Both outputs carry gradients (the entropy is
differentiable as well; detach it for selection).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["token_logprobs_and_entropy", "token_logprobs_and_entropy_from_hidden"]

_MIN_VOCAB_TILE = 1024
"""Narrowest vocabulary slice of a backward tile from hidden states: thinner slices make the
``[tokens, H] @ [H, slice]`` matmuls inefficient; the token dimension is cut instead."""


# ----------------------------------------------------------------------------- tile maths
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


class _Scratch:
    """Named scratch buffers allocated once and reused by every tile.

    Reuse matters on CPU as well as for memory: a fresh multi-hundred-MB allocation is
    returned to the OS when freed and page-faulted in again by the next tile.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
        """A ``[rows, cols]`` contiguous view of buffer ``name`` (grown if needed)."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < rows * cols:
            self._buffers.pop(name, None)  # free the old one before allocating
            buf = torch.empty(rows * cols, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[: rows * cols].view(rows, cols)


def _upcast(x: Tensor, scratch: _Scratch, owned: bool) -> Tensor:
    """``x`` in the compute dtype, as a buffer this module may overwrite.

    ``owned`` says ``x`` is our own logits buffer, reused when it has the compute dtype.
    The conversion is an explicit ``copy_``: mixed-dtype ``out=`` ops on CPU would first
    materialise a converted copy of their input (a hidden ``[C, V]`` temporary).
    """
    cdtype = _compute_dtype(x.dtype)
    if owned and x.dtype == cdtype:
        return x
    return scratch.take("z", *x.shape, cdtype).copy_(x)


def _tile_forward(
    x: Tensor, tok: Tensor, temperature: float, with_entropy: bool, scratch: _Scratch, owned: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``logp(y)``, ``lse`` and ``H`` (or None) of a tile of whole rows; ``x [C, V]``, ``tok [C]``.

    With ``u = z - max z <= 0``, ``e = exp(u)`` and ``s = sum_v e_v``: ``lse = max z + log s``,
    ``logp(y) = u_y - log s`` and ``H = log s - sum_v e_v u_v / s`` (two terms >= 0, so no
    cancellation). Two ``[C, V]`` compute-dtype buffers: ``u`` (which may be ``x`` itself
    when ``owned``, i.e. logits we computed in the compute dtype) and ``e``.
    """
    cdtype = _compute_dtype(x.dtype)
    xmax = x.amax(dim=-1, keepdim=True).to(cdtype)  # [C, 1]
    u = _upcast(x, scratch, owned).sub_(xmax)  # x - max x   [C, V]
    if temperature != 1.0:
        u.div_(temperature)  # z - max z
    zmax = xmax / temperature  # [C, 1]
    e = torch.exp(u, out=scratch.take("p", *u.shape, cdtype))  # [C, V]
    sumexp = e.sum(dim=-1)  # [C]
    log_sumexp = sumexp.log()  # [C]
    token_logp = u.gather(-1, tok[:, None]).squeeze(-1) - log_sumexp  # [C]
    lse = zmax.squeeze(-1) + log_sumexp  # [C]
    entropy = None
    if with_entropy:
        dot = torch.bmm(e[:, None, :], u[:, :, None]).view(-1)  # sum_v e_v u_v   [C]
        entropy = log_sumexp - dot / sumexp
    return token_logp, lse, entropy


def _tile_grad(
    x: Tensor,
    tok: Tensor,
    lse: Tensor,
    entropy: Tensor | None,
    g_logp: Tensor | None,
    g_entropy: Tensor | None,
    temperature: float,
    logp_buffer: Tensor,
    d_buffer: Tensor | None = None,
    v0: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """Gradient w.r.t. a tile of logits ``x [C, Vt]`` (vocabulary ids ``v0 .. v0+Vt-1``).

    ``grad_x_v = (1/tau) * ( g_logp * ([v == y] - p_v) - g_H * p_v (log p_v + H) )``
    with ``log p_v = x_v / tau - lse`` recomputed from the saved ``lse [C]`` (and ``H [C]``).

    Returned as ``(D, row_scale)`` with ``grad_x = row_scale[:, None] * D``, or ``row_scale``
    None when ``D`` is the gradient itself. Without an entropy gradient (the usual case)
    ``D = p - onehot(y)`` and ``row_scale = -g_logp / tau``: the scaling then costs nothing
    on ``[C, Vt]`` (it moves onto ``[C, H]`` operands of the matmuls), and ``p_y - 1`` is
    taken as ``expm1(log p_y)`` before any rounding to bf16.

    Args:
        logp_buffer: ``[C, Vt]`` compute-dtype buffer for ``log p`` (may be ``x`` itself).
        d_buffer: ``[C, Vt]`` buffer for ``D`` when it must have another dtype than the
            compute dtype (bf16 for an lm_head's matmuls); None keeps the compute dtype.
    """
    inv_tau = 1.0 / temperature
    logp = logp_buffer if logp_buffer is x else logp_buffer.copy_(x)  # [C, Vt]
    if temperature != 1.0:
        logp.div_(temperature)
    logp.sub_(lse[:, None])  # log p
    cdtype = logp.dtype
    local = tok - v0  # [C]
    rows = ((local >= 0) & (local < x.shape[1])).nonzero().squeeze(-1)  # tokens in this tile
    cols = local[rows]
    if g_entropy is None:
        logp_y = logp[rows, cols]  # [C']
        d = logp.exp_() if d_buffer is None else d_buffer.copy_(logp.exp_())  # p
        d[rows, cols] = torch.expm1(logp_y).to(d.dtype)  # p_y - 1
        return d, -g_logp.to(cdtype) * inv_tau
    assert entropy is not None
    g_l = torch.zeros_like(lse) if g_logp is None else g_logp.to(cdtype) * inv_tau  # [C]
    g_h = g_entropy.to(cdtype) * inv_tau  # [C]
    p = torch.exp(logp)  # [C, Vt] (this rarely used path takes one more buffer)
    weight = logp.add_(entropy[:, None]).mul_(g_h[:, None]).add_(g_l[:, None])
    grad = p.mul_(weight).neg_()
    grad.index_put_((rows, cols), g_l[rows], accumulate=True)
    return (grad if d_buffer is None else d_buffer.copy_(grad)), None


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


def _optional_slice(x: Tensor | None, n0: int, n1: int) -> Tensor | None:
    return None if x is None else x[n0:n1]


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
        scratch = _Scratch(logits3.device)
        for n0 in range(0, N, chunk_size):
            n1 = min(N, n0 + chunk_size)
            x = _rows(logits3, flat, n0, n1)  # [C, V]
            lp, ls, ent = _tile_forward(x, tokens[n0:n1], temperature, with_entropy, scratch, False)
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
        cdtype = _compute_dtype(logits3.dtype)
        scratch = _Scratch(logits3.device)
        for n0 in range(0, B * T, ctx.chunk_size):
            n1 = min(B * T, n0 + ctx.chunk_size)
            out = grad[n0:n1]  # [C, V]
            # Work in the gradient's own rows when it has the compute dtype.
            buffer = out if out.dtype == cdtype else scratch.take("z", n1 - n0, V, cdtype)
            d, scale = _tile_grad(
                _rows(logits3, flat, n0, n1),
                tokens[n0:n1],
                lse[n0:n1],
                _optional_slice(entropy, n0, n1),
                _optional_slice(g_logp, n0, n1),
                _optional_slice(g_entropy, n0, n1),
                ctx.temperature,
                logp_buffer=buffer,
            )
            if scale is not None:
                d.mul_(scale[:, None])
            if d is not out:
                out.copy_(d)
        return grad.view(B, T, V), None, None, None, None


# ------------------------------------------------------------------------- hidden path
def _backward_tiles(N: int, V: int, chunk_size: int) -> tuple[int, int]:
    """``(token_tile, vocab_tile)`` of the hidden-path backward, ``<= chunk_size * V`` elements.

    All tokens at once and a slice of the vocabulary when that slice is at least
    ``_MIN_VOCAB_TILE`` wide (each weight row block then gets its gradient from one matmul);
    otherwise slices of ``_MIN_VOCAB_TILE`` and as many tokens as fit.
    """
    budget = chunk_size * V
    vocab_tile = min(V, max(budget // max(N, 1), _MIN_VOCAB_TILE))
    token_tile = max(1, min(N, budget // vocab_tile))
    return token_tile, vocab_tile


class _LogprobEntropyFromHidden(torch.autograd.Function):
    """Chunked ``logp(y)`` and ``H`` of ``logits = hidden @ weight.T`` without ``[N, V]``."""

    @staticmethod
    def forward(ctx, hidden2, weight, tokens, temperature, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)
        N, V = tokens.shape[0], weight.shape[0]
        cdtype = _compute_dtype(hidden2.dtype)
        token_logp = torch.empty(N, dtype=cdtype, device=hidden2.device)  # [N]
        lse = torch.empty_like(token_logp)  # [N]
        entropy = torch.empty_like(token_logp) if with_entropy else None  # [N]
        scratch = _Scratch(hidden2.device)
        # Logits land directly in the compute buffer "z" when no upcast is needed.
        name = "z" if hidden2.dtype == cdtype else "x"
        for n0 in range(0, N, chunk_size):
            n1 = min(N, n0 + chunk_size)
            x = scratch.take(name, n1 - n0, V, hidden2.dtype)  # [C, V]
            torch.mm(hidden2[n0:n1], weight.T, out=x)
            lp, ls, ent = _tile_forward(x, tokens[n0:n1], temperature, with_entropy, scratch, True)
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
        (N, Hd), V, dtype = hidden2.shape, weight.shape[0], hidden2.dtype
        cdtype = _compute_dtype(dtype)
        token_tile, vocab_tile = _backward_tiles(N, V, ctx.chunk_size)
        scratch = _Scratch(hidden2.device)
        name = "z" if dtype == cdtype else "x"
        # grad_h sums over vocabulary tiles: a float32 (float64) accumulator, only [N, H].
        grad_h = torch.zeros(N, Hd, dtype=cdtype, device=hidden2.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None  # [V, H]
        for v0 in range(0, V, vocab_tile):
            v1 = min(V, v0 + vocab_tile)
            w = weight[v0:v1]  # [Vt, H]
            # Several token tiles add into this weight block: accumulate them in cdtype.
            w_acc = None
            if need_w and token_tile < N:
                w_acc = scratch.take("w_acc", v1 - v0, Hd, cdtype).zero_()
            for n0 in range(0, N, token_tile):
                n1 = min(N, n0 + token_tile)
                h = hidden2[n0:n1]  # [C, H]
                x = torch.mm(h, w.T, out=scratch.take(name, n1 - n0, v1 - v0, dtype))  # [C, Vt]
                same = dtype == cdtype  # else: log p in float32, D back in the bf16 buffer x
                d, scale = _tile_grad(
                    x,
                    tokens[n0:n1],
                    lse[n0:n1],
                    _optional_slice(entropy, n0, n1),
                    _optional_slice(g_logp, n0, n1),
                    _optional_slice(g_entropy, n0, n1),
                    ctx.temperature,
                    logp_buffer=x if same else scratch.take("z", *x.shape, cdtype),
                    d_buffer=None if same else x,
                    v0=v0,
                )  # grad_x = scale[:, None] * d, d [C, Vt] in the input dtype
                if grad_h is not None:
                    gh = (d @ w).to(cdtype)  # [C, H]
                    grad_h[n0:n1] += gh if scale is None else gh * scale[:, None]
                if grad_w is not None:
                    hs = h if scale is None else (h.to(cdtype) * scale[:, None]).to(dtype)
                    if w_acc is not None:
                        w_acc += d.T @ hs  # [Vt, H]
                    else:
                        torch.mm(d.T, hs, out=grad_w[v0:v1])  # [Vt, H], one matmul over all N
            if w_acc is not None:
                grad_w[v0:v1] = w_acc
        if grad_h is not None:
            grad_h = grad_h.to(dtype)
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
    chunk_size: int = 256,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each sampled token and the entropy of each position, from logits.

    ``z = logits / temperature``; ``logp_t = z_t[y_t] - lse(z_t)``;
    ``H_t = -sum_v softmax(z_t)_v log softmax(z_t)_v``; computed ``chunk_size`` tokens at a
    time (module docstring), so at most two ``[chunk_size, V]`` float32 scratch buffers exist
    besides the gradient ``[..., T, V]`` (in ``logits.dtype``) that the backward pass returns.

    Args:
        logits: ``[..., T, V]`` any float dtype (bf16 is upcast per chunk). Non-contiguous
            inputs such as ``logits[:, :-1]`` are read without copying them whole.
        tokens: ``[..., T]`` integer ids in ``[0, V)`` (the sampled tokens).
        temperature: ``tau > 0``; use the sampling temperature so the log-probs are those
            of the distribution the tokens were drawn from.
        chunk_size: tokens per chunk (all leading dimensions flattened).
        with_entropy: also return ``H`` (skipping it saves one pass over each chunk).

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
    chunk_size: int = 256,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs_and_entropy` for ``logits = hidden @ weight.T`` (an lm_head).

    The forward pass computes the logits of ``chunk_size`` tokens at a time in the input
    dtype; the backward pass recomputes them in tiles of at most ``chunk_size * V`` elements
    cut along the vocabulary (all tokens times a slice of ``weight`` rows, see
    :func:`_backward_tiles`), so neither pass holds logits for all tokens. Gradients w.r.t.
    ``hidden`` and ``weight`` equal those of the plain computation (to rounding: in bf16 the
    rounding points differ, the error against float64 is the same size as the plain one's).
    Cost: one more ``[N, H] x [H, V]`` matmul than the plain computation (the recompute).

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
