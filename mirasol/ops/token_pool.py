"""Token reduction (TokenLearner pooling): argument checks, backend choice, autograd.

``out[b, j] = sum_n softmax_n(logits[b, n, j]) * x[b, n]`` over each segment's tokens: the
Combiner's read and write of the Token Turing Machine memory and TokenLearner's pooling.
Chain of names::

    _token_pool_fwd_kernel / _token_pool_bwd_kernel    (mirasol.kernels.token_pool)
    token_pool_fwd / token_pool_bwd                    (launchers)
    torch.ops.mirasol.token_pool_fwd / _bwd            (custom ops: torch.compile)
    TokenPoolFunction                                  (autograd)
    token_pool                                         (functional, here)
    TokenLearner                                       (nn.Module, mirasol.layers)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mirasol import reference
from mirasol.masks import segment_ids
from mirasol.ops._backends import ELEMENTS, Call, Limit, span, standard_backends
from mirasol.ops._checks import (Lengths, check_cu_seqlens, check_lengths, check_like,
                                 check_tensor, check_values, shape_of)
from mirasol.ops._op import Op, maxima_or, register, segment_maxima

MAX_OUTPUT_TOKENS = 64
OUTPUT_TOKENS = Limit("number of output tokens", MAX_OUTPUT_TOKENS,
                      "the backward holds an m x m block of out·dOutᵀ in registers")


# ----------------------------------------------------------------- the torch backend


def _layout(x: Tensor, cu: Tensor | None, lengths: Tensor | None):
    """(segment index, position) of every token row, and (B, longest, valid mask)."""
    if cu is None:
        B, N = x.shape[:2]
        counts = torch.full((B,), N, device=x.device) if lengths is None else lengths
        valid = torch.arange(N, device=x.device)[None, :] < counts[:, None]
        return None, (B, N, valid)
    bounds = cu.tolist()
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    seg = segment_ids(cu, x.shape[0])
    pos = torch.arange(x.shape[0], device=x.device) - cu[seg]
    valid = torch.zeros(len(bounds) - 1, longest, dtype=torch.bool, device=x.device)
    valid[seg, pos] = True
    return (seg, pos), (len(bounds) - 1, longest, valid)


def _pad(t: Tensor, rows, shape) -> Tensor:
    if rows is None:
        return t
    B, N, _ = shape
    out = t.new_zeros(B, N, t.shape[-1])
    out[rows] = t
    return out


def _weights(logits: Tensor, valid: Tensor, stats: Tensor | None = None):
    """Softmax over tokens (dim 1) of the valid rows of (B, N, m) logits, and its stats
    (B, 2, m): each column's max and log-sum, as the kernel saves them (the winning weight
    stays exact for large logits). An empty segment has all-zero weights."""
    logits = logits.masked_fill(~valid[..., None], -math.inf)
    if stats is None:
        # (B, m); a batch of empty segments has no token to take a max over.
        col_max = (logits.amax(dim=1).nan_to_num(neginf=0.0) if logits.shape[1]
                   else logits.new_zeros(logits.shape[0], logits.shape[2]))
        log_sum = torch.exp(logits - col_max[:, None]).sum(dim=1).clamp_min(1).log()
        stats = torch.stack((col_max, log_sum), dim=1)
    # Padding rows get weight 0 by where: exp(-inf - NaN) is NaN where a column's stats are.
    weights = torch.exp(logits - stats[:, :1] - stats[:, 1:]).masked_fill(~valid[..., None], 0)
    return weights, stats


def _torch_fwd(x, logits, cu, lengths):
    """Batched over segments (packed ones padded to the longest): a masked softmax over
    tokens and one batched matmul, in fp32 for half inputs."""
    dtype, acc = x.dtype, torch.promote_types(x.dtype, torch.float32)
    rows, shape = _layout(x, cu, lengths)
    weights, stats = _weights(_pad(logits.to(acc), rows, shape), shape[2])
    # Padding tokens are no terms (a NaN there must not reach the outputs as 0 * NaN).
    xp = _pad(x.to(acc), rows, shape).masked_fill(~shape[2][..., None], 0)
    return torch.bmm(weights.transpose(1, 2), xp).to(dtype), stats


def _torch_bwd(dout, x, logits, out, stats, cu, lengths):
    dtype, acc = x.dtype, torch.promote_types(x.dtype, torch.float32)
    rows, shape = _layout(x, cu, lengths)
    xp = _pad(x.to(acc), rows, shape).masked_fill(~shape[2][..., None], 0)  # as forward
    weights, _ = _weights(_pad(logits.to(acc), rows, shape), shape[2], stats)  # (B, N, m)
    dout = dout.to(acc)
    dx = torch.bmm(weights, dout)                                        # (B, N, d)
    dp = torch.bmm(xp, dout.transpose(1, 2))                             # (B, N, m)
    # The softmax backward's own form, sum_n p * dp (= dout · out): exact where a weight
    # is one.
    dlogits = weights * (dp - (weights * dp).sum(1, keepdim=True))
    dlogits = dlogits.masked_fill(~shape[2][..., None], 0)  # padding: no term, not 0 * NaN
    if rows is not None:
        dx, dlogits = dx[rows], dlogits[rows]
    return dx.to(dtype), dlogits.to(dtype)


# ---------------------------------------------------------------- the triton backend


def _triton_fwd(x, logits, cu, lengths):
    from mirasol.kernels import token_pool_fwd

    batch = x.shape[0] if cu is None else cu.numel() - 1
    return token_pool_fwd(x, logits, batch, cu, lengths)


def _triton_bwd(dout, x, logits, out, stats, cu, lengths, longest):
    from mirasol.kernels import token_pool_bwd

    return token_pool_bwd(dout, x, logits, out, stats, longest, cu, lengths)


_FWD = {"triton": _triton_fwd, "torch": _torch_fwd}
# Called as bwd(dout, x, logits, out, stats, cu, lengths, longest): the longest segment
# sizes the kernel's grid; the torch path pads to it itself.
_BWD = {"triton": _triton_bwd, "torch": lambda *args: _torch_bwd(*args[:-1])}


# ------------------------------------------------------------ the chain of the op

OP_NAME = "token_pool"


def _check(x: Tensor, logits: Tensor, *, cu_seqlens: Tensor | None = None,
           lengths: Tensor | None = None) -> Call:
    op = OP_NAME
    packed = cu_seqlens is not None
    if packed and lengths is not None:
        raise ValueError(f"{op}: give cu_seqlens (packed) or lengths (padded), not both")
    rank, layout = (2, "(total_tokens, dim) with cu_seqlens") if packed else (
        3, "(batch, tokens, dim)")
    check_tensor(op, "x", x, dim=rank, layout=layout)
    check_tensor(op, "logits", logits)
    check_like(op, "logits", logits, "x", x)
    if logits.dim() != rank or logits.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{op}: logits must have shape {(*x.shape[:-1], 'num_tokens')} "
                         f"(one column per output token), got {shape_of(logits)}")
    if logits.shape[-1] == 0:
        raise ValueError(f"{op}: logits must have at least one column (output token)")
    if packed:
        check_cu_seqlens(op, "cu_seqlens", cu_seqlens, "x", x)
    else:
        check_lengths(op, "lengths", lengths, x.shape[0], "x", x)
    batch = cu_seqlens.numel() - 1 if packed else x.shape[0]
    m, d = logits.shape[-1], x.shape[-1]
    # The kernels also write out (B, m, d) and stats (B, 2, m).
    elements = max(span(x), span(logits), batch * m * d, batch * 2 * m)
    return Call.of(x, {OUTPUT_TOKENS.name: m, ELEMENTS.name: elements})


OP = register(Op(OP_NAME, standard_backends(OUTPUT_TOKENS), _check))


def _check_lengths(x: Tensor, lengths: Tensor | None) -> None:
    if lengths is not None:
        check_values(OP_NAME, Lengths("lengths", lengths, x.shape[1]))


@torch.library.custom_op("mirasol::token_pool_fwd", mutates_args=())
def _token_pool_fwd(x: Tensor, logits: Tensor, cu_seqlens: Tensor | None,
                    lengths: Tensor | None, longest: Tensor | None,
                    backend: str) -> tuple[Tensor, Tensor]:
    """longest: the longest packed segment (segment_maxima). Only the backward launches
    with it; the forward takes it so that the check that made it runs first, compiled too."""
    _check_lengths(x, lengths)
    return _FWD[backend](x, logits, cu_seqlens, lengths)


@_token_pool_fwd.register_fake
def _(x, logits, cu_seqlens, lengths, longest, backend):
    batch = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    return (x.new_empty(batch, logits.shape[-1], x.shape[-1]),
            x.new_empty(batch, 2, logits.shape[-1], dtype=stats_dtype))


@torch.library.custom_op("mirasol::token_pool_bwd", mutates_args=())
def _token_pool_bwd(dout: Tensor, x: Tensor, logits: Tensor, out: Tensor, stats: Tensor,
                    cu_seqlens: Tensor | None, lengths: Tensor | None, longest: Tensor | None,
                    backend: str) -> tuple[Tensor, Tensor]:
    return _BWD[backend](dout, x, logits, out, stats, cu_seqlens, lengths,
                         *maxima_or(longest, x.shape[1]))


@_token_pool_bwd.register_fake
def _(dout, x, logits, out, stats, cu_seqlens, lengths, longest, backend):
    return torch.empty_like(x), torch.empty_like(logits)


class TokenPoolFunction(torch.autograd.Function):
    """Autograd for the triton and torch backends: the forward saves (out, stats), the
    backward recomputes the weights from them and launches with the longest packed segment
    (a CPU tensor: read without a device sync)."""

    @staticmethod
    def forward(ctx, x, logits, cu_seqlens, lengths, longest, backend: str):
        out, stats = torch.ops.mirasol.token_pool_fwd(x, logits, cu_seqlens, lengths, longest,
                                                      backend)
        ctx.save_for_backward(x, logits, out, stats, cu_seqlens, lengths, longest)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, dout):
        dx, dlogits = torch.ops.mirasol.token_pool_bwd(dout, *ctx.saved_tensors, ctx.backend)
        return dx, dlogits, None, None, None, None


def token_pool(x: Tensor, logits: Tensor, *, cu_seqlens: Tensor | None = None,
               lengths: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Softmax-weighted pooling of each segment's tokens, one output per logits column.

    ``out[b, j] = sum_n softmax_n(logits[b, n, j]) * x[b, n]``

    Args:
        x: tokens, padded (B, N, d) or packed (total, d) with ``cu_seqlens``.
        logits: (B, N, m) or (total, m): one column per output token (m <= 64 on the
            triton backend).
        cu_seqlens: int32 (B + 1,), the packed segments' bounds (0, ..., total).
        lengths: optional (B,) int, the valid tokens of each padded sample.
        backend: see ``mirasol.ops``.

    Returns:
        (B, m, d) in x's dtype. An empty segment gives 0 and no gradient; very large
        logits do not overflow (the softmax is taken relative to each column's max).
        Accumulation in fp32; error within 2x the same-dtype reference's.
    """
    name = OP.choose(backend, _check(x, logits, cu_seqlens=cu_seqlens, lengths=lengths))
    longest = None if cu_seqlens is None else segment_maxima(OP_NAME, cu_seqlens, x.shape[0])
    if name == "reference":
        _check_lengths(x, lengths)
        return reference.token_pool(x, logits, cu_seqlens=cu_seqlens, lengths=lengths)
    return TokenPoolFunction.apply(x, logits, cu_seqlens, lengths, longest, name)
