"""Chunked causal attention: argument checks, backend choice, autograd, custom op.

Token i attends to token j iff ``j // chunk_size <= i // chunk_size``: every token sees
all tokens of its own chunk and of every earlier chunk (Mirasol3B's A/V autoregressive
model, with one chunk per time span). Chain of names::

    _attn_fwd_kernel / _attn_bwd_*_kernel                    (mirasol.kernels.attention,
                                                             shared with cross-attention)
    chunked_attn_fwd / chunked_attn_bwd                      (launchers)
    torch.ops.mirasol.chunked_attention_fwd / _bwd           (custom ops: torch.compile)
    ChunkedAttentionFunction                                 (autograd)
    chunked_causal_attention                                 (functional, here)
    ChunkedCausalSelfAttention                               (nn.Module, mirasol.layers)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mirasol import reference
from mirasol.ops._backends import HEAD_DIM, Call, standard_backends
from mirasol.ops._checks import (Lengths, attention_call, check_attention_inputs,
                                 check_positive_int, check_scale, check_values,
                                 default_scale)
from mirasol.ops._dense import attention_lse, attention_lse_backward
from mirasol.ops._op import Op, register


# ----------------------------------------------------------------- the torch backend


def _chunks(lengths: Tensor | None, n: int, chunk_size: int):
    """(batch slice, chunk start, chunk end, sample length) of every chunk: of all samples
    at once when there are no lengths, else of each sample in turn."""
    samples = ([(slice(None), n)] if lengths is None
               else [(slice(b, b + 1), int(length)) for b, length in enumerate(lengths.tolist())])
    for b, length in samples:
        for start in range(0, length, chunk_size):
            yield b, start, min(start + chunk_size, length), length


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _torch_fwd(q, k, v, lengths, chunk_size, scale):
    """Per chunk: its queries against the visible key prefix, unmasked. Half-precision
    inputs are computed in fp32 (as the CPU kernel accumulates anyway), so the output's is
    the only rounding to the input dtype."""
    dtype, acc = q.dtype, _accumulation_dtype(q.dtype)
    q, k, v = (t.to(acc) for t in (q, k, v))
    out = torch.empty(q.shape, dtype=acc, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=acc, device=q.device)
    if lengths is not None:  # rows past a length are never written: 0, with lse = log 0
        out.zero_()
        lse.fill_(-math.inf)
    for b, start, end, _ in _chunks(lengths, q.shape[2], chunk_size):
        out[b, :, start:end], lse[b, :, start:end] = attention_lse(
            q[b, :, start:end], k[b, :, :end], v[b, :, :end], scale)
    return out.to(dtype), lse


def _torch_bwd(do, q, k, v, out, lse, lengths, chunk_size, scale):
    """Per chunk of keys: every query that sees it, unmasked, probabilities recomputed from
    the saved lse. Each key chunk's dK/dV come out whole; dQ sums one partial per key chunk
    (in fp32). Keyed by key chunk rather than query chunk, one gradient is summed instead of
    two (dK and dV), which halves the memory traffic of the sums."""
    dtype, acc = q.dtype, _accumulation_dtype(q.dtype)
    do, q, k, v, out = (t.to(acc) for t in (do, q, k, v, out))
    dq, dk, dv = (torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
    for b, start, end, length in _chunks(lengths, q.shape[2], chunk_size):
        rows, keys = slice(start, length), slice(start, end)
        gq, dk[b, :, keys], dv[b, :, keys] = attention_lse_backward(
            do[b, :, rows], q[b, :, rows], k[b, :, keys], v[b, :, keys], out[b, :, rows],
            lse[b, :, rows], scale)
        dq[b, :, rows] += gq
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


# ---------------------------------------------------------------- the triton backend


def _triton_fwd(q, k, v, lengths, chunk_size, scale):
    from mirasol.kernels import chunked_attn_fwd

    return chunked_attn_fwd(q, k, v, chunk_size, scale, lengths)


def _triton_bwd(do, q, k, v, out, lse, lengths, chunk_size, scale):
    from mirasol.kernels import chunked_attn_bwd

    return chunked_attn_bwd(do, q, k, v, out, lse, chunk_size, scale, lengths)


_FWD = {"triton": _triton_fwd, "torch": _torch_fwd}
_BWD = {"triton": _triton_bwd, "torch": _torch_bwd}


# ------------------------------------------------------------ the chain of the op

OP_NAME = "chunked_causal_attention"


def _check(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, *, scale: float | None = None,
           lengths: Tensor | None = None) -> Call:
    check_attention_inputs(OP_NAME, q, k, v, lengths=lengths, self_attention=True)
    check_positive_int(OP_NAME, "chunk_size", chunk_size)
    check_scale(OP_NAME, scale)
    return attention_call(q, k, v)


OP = register(Op(OP_NAME, standard_backends(HEAD_DIM), _check))


def _check_values(q: Tensor, lengths: Tensor | None) -> None:
    if lengths is not None:
        check_values(OP_NAME, Lengths("lengths", lengths, q.shape[2]))


@torch.library.custom_op("mirasol::chunked_attention_fwd", mutates_args=())
def _chunked_attention_fwd(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor | None,
                           chunk_size: int, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    _check_values(q, lengths)
    return _FWD[backend](q, k, v, lengths, chunk_size, scale)


@_chunked_attention_fwd.register_fake
def _(q, k, v, lengths, chunk_size, scale, backend):
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            q.new_empty(q.shape[:3], dtype=lse_dtype))


@torch.library.custom_op("mirasol::chunked_attention_bwd", mutates_args=())
def _chunked_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                           lse: Tensor, lengths: Tensor | None, chunk_size: int, scale: float,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _BWD[backend](do, q, k, v, out, lse, lengths, chunk_size, scale)


@_chunked_attention_bwd.register_fake
def _(do, q, k, v, out, lse, lengths, chunk_size, scale, backend):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


class ChunkedAttentionFunction(torch.autograd.Function):
    """Autograd for the triton and torch backends: the forward saves (out, lse), the
    backward recomputes probabilities from them (nothing of size N x N is kept)."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, chunk_size: int, scale: float, backend: str):
        out, lse = torch.ops.mirasol.chunked_attention_fwd(q, k, v, lengths, chunk_size,
                                                           scale, backend)
        ctx.save_for_backward(q, k, v, out, lse, lengths)
        ctx.chunk_size, ctx.scale, ctx.backend = chunk_size, scale, backend
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, lengths = ctx.saved_tensors
        dq, dk, dv = torch.ops.mirasol.chunked_attention_bwd(
            do, q, k, v, out, lse, lengths, ctx.chunk_size, ctx.scale, ctx.backend)
        return dq, dk, dv, None, None, None, None


def chunked_causal_attention(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, *,
                             scale: float | None = None, lengths: Tensor | None = None,
                             backend: str = "auto") -> Tensor:
    """Chunked (block-) causal attention in SDPA's layout.

    ``out[b, h, i] = softmax_j(q[b,h,i] · k[b,h',j] · scale, j visible) @ v[b,h',j]`` where
    ``j`` is visible from ``i`` iff ``j // chunk_size <= i // chunk_size`` and
    ``i, j < lengths[b]``; ``h' = h // (H / H_kv)``.

    Args:
        q: (B, H, N, D) queries; fp16, bf16, fp32 (fp64 on the torch and reference backends).
        k, v: (B, H_kv, N, D) keys and values, ``H % H_kv == 0`` (grouped-query attention).
        chunk_size: tokens per chunk, any positive int (need not divide N or the tile size).
        scale: score scale, default ``D ** -0.5``.
        lengths: optional (B,) int tensor, ``0 <= lengths[b] <= N``, on q's device: sample b
            occupies positions [0, lengths[b]); rows past it are 0 and get zero gradients.
        backend: "auto" | "triton" | "torch" | "reference" (see ``mirasol.ops``).

    Returns:
        (B, H, N, D) in q's dtype. Accumulation is fp32 (fp64 for fp64 inputs); the error
        against a float64 oracle is at most twice that of the reference computed in q's
        dtype (``mirasol.testing``).
    """
    call = _check(q, k, v, chunk_size, scale=scale, lengths=lengths)
    name = OP.choose(backend, call)
    scale = default_scale(q, scale)
    if name == "reference":
        _check_values(q, lengths)
        return reference.chunked_causal_attention(q, k, v, chunk_size, scale=scale,
                                                  lengths=lengths)
    return ChunkedAttentionFunction.apply(q, k, v, lengths, chunk_size, scale, name)
