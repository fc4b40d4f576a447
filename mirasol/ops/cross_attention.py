"""Cross-modal cross-attention: each query segment attends to its own key segment.

One op serves Mirasol3B's text decoder (text tokens -> that sample's audio-video latents),
the Transformer Combiner's last layer (a chunk's m learned queries -> that chunk's tokens)
and block-diagonal attention over all chunks of a batch. Queries are never masked by key
padding: only keys are limited. Chain of names::

    _attn_fwd_kernel / _attn_bwd_*_kernel             (mirasol.kernels.attention, shared)
    cross_attn_fwd / cross_attn_bwd                   (launchers)
    torch.ops.mirasol.cross_attention_fwd / _bwd      (custom ops: torch.compile)
    CrossAttentionFunction                            (autograd)
    cross_attention / cross_attention_padded          (functional, here)
    CrossModalAttention                               (nn.Module, mirasol.layers)

Internally both forms are 4-D: a packed (total, H, D) tensor travels as its
(1, H, total, D) view.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mirasol import masks, reference
from mirasol.ops._backends import HEAD_DIM, Call, standard_backends
from mirasol.ops._checks import (Lengths, attention_call, check_attention_inputs, check_bool,
                                 check_non_negative_int, check_packed_inputs, check_scale,
                                 check_values, default_scale)
from mirasol.ops._dense import attention_lse, attention_lse_backward, compute_dtypes, has_nan
from mirasol.ops._op import Op, maxima_or, register, segment_maxima


def _segments(q4: Tensor, k4: Tensor, cu_q, cu_k, k_lengths, causal: bool):
    """(batch slice, query rows, key rows, causal mask or None) of each segment's unmasked
    piece. Under causality, rows that see no key are left out (their output is 0) and the
    piece carries its bottom-right triangular mask."""
    if cu_q is not None:
        q_bounds, k_bounds = cu_q.tolist(), cu_k.tolist()
        pieces = [(slice(0, 1), q_bounds[b], q_bounds[b + 1], k_bounds[b], k_bounds[b + 1])
                  for b in range(len(q_bounds) - 1)]
    elif k_lengths is not None:
        pieces = [(slice(b, b + 1), 0, q4.shape[2], 0, n)
                  for b, n in enumerate(k_lengths.tolist())]
    else:
        pieces = [(slice(None), 0, q4.shape[2], 0, k4.shape[2])]
    for b, q0, q1, k0, k1 in pieces:
        shift = (k1 - k0) - (q1 - q0)
        first = max(0, -shift) if causal else 0  # rows before it see no key
        if q0 + first >= q1 or k0 >= k1:
            continue
        mask = None
        if causal:  # the piece's rows first.. of the segment, against all its keys
            rows = torch.arange(first, q1 - q0, device=q4.device)[:, None]
            mask = masks.visible(rows, torch.arange(k1 - k0, device=q4.device)[None, :],
                                 q1 - q0, k1 - k0, masks.TOKEN_CAUSAL)
        yield b, slice(q0 + first, q1), slice(k0, k1), mask


def _torch_fwd(q, k, v, cu_q, cu_k, k_lengths, causal, scale):
    """One unmasked (or, causal, triangle-masked) fused attention call per segment, in the
    dtypes of :func:`~mirasol.ops._dense.compute_dtypes`; no mask across segments is ever
    built."""
    dtype, (compute, acc) = q.dtype, compute_dtypes(q)
    q, k, v = (t.to(compute) for t in (q, k, v))
    out = torch.zeros_like(q, dtype=acc)  # rows that see no key stay 0, with lse = log 0
    lse = torch.full(q.shape[:3], -math.inf, dtype=acc, device=q.device)
    nan = has_nan(q, k, v)
    for b, rows, keys, mask in _segments(q, k, cu_q, cu_k, k_lengths, causal):
        out[b, :, rows], lse[b, :, rows] = attention_lse(q[b, :, rows], k[b, :, keys],
                                                         v[b, :, keys], scale, mask,
                                                         may_hold_nan=nan)
    return out.to(dtype), lse


def _torch_bwd(do, q, k, v, out, lse, cu_q, cu_k, k_lengths, causal, scale):
    dtype, (compute, acc) = q.dtype, compute_dtypes(q)
    do, q, k, v, out = (t.to(compute) for t in (do, q, k, v, out))
    dq, dk, dv = (torch.zeros_like(t, dtype=acc) for t in (q, k, v))
    nan = has_nan(do, q, k, v)
    for b, rows, keys, mask in _segments(q, k, cu_q, cu_k, k_lengths, causal):
        # Segments are disjoint: every gradient row is written once, nothing is summed.
        dq[b, :, rows], dk[b, :, keys], dv[b, :, keys] = attention_lse_backward(
            do[b, :, rows], q[b, :, rows], k[b, :, keys], v[b, :, keys], out[b, :, rows],
            lse[b, :, rows], scale, mask, may_hold_nan=nan)
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


def _triton_fwd(q, k, v, cu_q, cu_k, k_lengths, causal, scale, max_q, max_k):
    from mirasol.kernels import cross_attn_fwd

    return cross_attn_fwd(q, k, v, scale, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                          k_lengths=k_lengths, max_seqlen_q=max_q, max_seqlen_k=max_k,
                          causal=causal)


def _triton_bwd(do, q, k, v, out, lse, cu_q, cu_k, k_lengths, causal, scale, max_q, max_k):
    from mirasol.kernels import cross_attn_bwd

    return cross_attn_bwd(do, q, k, v, out, lse, scale, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                          k_lengths=k_lengths, max_seqlen_q=max_q, max_seqlen_k=max_k,
                          causal=causal)


# Called as fwd(q, k, v, *segments, max_q, max_k) and bwd(do, q, k, v, out, lse, *segments,
# max_q, max_k). The maxima size the kernels' grid; the torch path walks the segments.
_FWD = {"triton": _triton_fwd, "torch": lambda *args: _torch_fwd(*args[:-2])}
_BWD = {"triton": _triton_bwd, "torch": lambda *args: _torch_bwd(*args[:-2])}


# ------------------------------------------------------------ the chain of the op
#
# Both functionals share one custom op pair on 4-D (batch, heads, rows, head_dim) views: a
# packed (total, H, D) tensor travels as its (1, H, total, D) view.


def _check_packed(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Tensor,
                  cu_seqlens_k: Tensor, max_seqlen_q: int | None = None,
                  max_seqlen_k: int | None = None, scale: float | None = None,
                  causal: bool = False) -> Call:
    op = "cross_attention"
    check_packed_inputs(op, q, k, v, cu_seqlens_q, cu_seqlens_k)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if value is not None:
            check_non_negative_int(op, name, value)
    check_scale(op, scale)
    check_bool(op, "causal", causal)
    return attention_call(q, k, v)


def _check_padded(q: Tensor, k: Tensor, v: Tensor, *, k_lengths: Tensor | None = None,
                  scale: float | None = None, causal: bool = False) -> Call:
    op = "cross_attention_padded"
    check_attention_inputs(op, q, k, v, lengths=k_lengths, self_attention=False,
                           lengths_name="k_lengths")
    check_scale(op, scale)
    check_bool(op, "causal", causal)
    return attention_call(q, k, v)


BACKENDS = standard_backends(HEAD_DIM)
PACKED = register(Op("cross_attention", BACKENDS, _check_packed))
PADDED = register(Op("cross_attention_padded", BACKENDS, _check_padded))


def _check_k_lengths(k: Tensor, k_lengths: Tensor | None) -> None:
    if k_lengths is not None:
        check_values("cross_attention_padded", Lengths("k_lengths", k_lengths, k.shape[2]))


@torch.library.custom_op("mirasol::cross_attention_fwd", mutates_args=())
def _cross_attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor | None,
                         cu_seqlens_k: Tensor | None, k_lengths: Tensor | None,
                         maxima: Tensor | None, causal: bool, scale: float,
                         backend: str) -> tuple[Tensor, Tensor]:
    """maxima: the longest query and key segments of packed inputs (segment_maxima)."""
    _check_k_lengths(k, k_lengths)
    return _FWD[backend](q, k, v, cu_seqlens_q, cu_seqlens_k, k_lengths, causal, scale,
                         *maxima_or(maxima, q.shape[2], k.shape[2]))


@_cross_attention_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, k_lengths, maxima, causal, scale, backend):
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=lse_dtype)


@torch.library.custom_op("mirasol::cross_attention_bwd", mutates_args=())
def _cross_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                         cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
                         k_lengths: Tensor | None, maxima: Tensor | None, causal: bool,
                         scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _BWD[backend](do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, k_lengths, causal,
                         scale, *maxima_or(maxima, q.shape[2], k.shape[2]))


@_cross_attention_bwd.register_fake
def _(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, k_lengths, maxima, causal, scale,
      backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class CrossAttentionFunction(torch.autograd.Function):
    """Autograd for the triton and torch backends on 4-D (batch, heads, rows, head_dim)
    views: the forward saves (out, lse), the backward recomputes probabilities; both
    launch with the packed segments' maxima (a CPU tensor: read without a device sync)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, k_lengths, maxima, causal: bool,
                scale: float, backend: str):
        out, lse = torch.ops.mirasol.cross_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                         k_lengths, maxima, causal, scale,
                                                         backend)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, k_lengths, maxima)
        ctx.rest = (causal, scale, backend)
        return out

    @staticmethod
    def backward(ctx, do):
        dq, dk, dv = torch.ops.mirasol.cross_attention_bwd(do, *ctx.saved_tensors, *ctx.rest)
        return dq, dk, dv, *(None,) * 7


def cross_attention(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Tensor,
                    cu_seqlens_k: Tensor, max_seqlen_q: int | None = None,
                    max_seqlen_k: int | None = None, scale: float | None = None,
                    causal: bool = False, backend: str = "auto") -> Tensor:
    """Varlen cross-attention on packed sequences, as flash-attn's ``flash_attn_varlen_func``.

    Query segment b (rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``) attends to key segment b
    (rows ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``) and nothing else.

    Args:
        q: (total_q, H, D); k, v: (total_k, H_kv, D), ``H % H_kv == 0``.
        cu_seqlens_q, cu_seqlens_k: int32 (B + 1,), starting at 0, non-decreasing, ending at
            total_q / total_k. Segments may be empty.
        max_seqlen_q, max_seqlen_k: the longest segments; computed from cu_seqlens (a
            device sync) when None, checked when given.
        causal: bottom-right aligned: query i of a segment sees keys j <= i + k_len - q_len.
        scale: default ``D ** -0.5``. backend: see ``mirasol.ops``.

    Returns:
        (total_q, H, D). A query whose segment has no key to see (empty key segment, or
        before the first key under ``causal``) gets 0 and passes no gradient. Accumulation
        in fp32; error within 2x the same-dtype reference's (``mirasol.testing``).
    """
    call = _check_packed(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, scale=scale,
                         causal=causal)
    name = PACKED.choose(backend, call)
    scale = default_scale(q, scale)
    maxima = segment_maxima("cross_attention", cu_seqlens_q, q.shape[0], max_seqlen_q,
                            cu_seqlens_k, k.shape[0], max_seqlen_k)
    if name == "reference":
        return reference.cross_attention(q, k, v, cu_seqlens_q=cu_seqlens_q,
                                         cu_seqlens_k=cu_seqlens_k, causal=causal, scale=scale)
    q4, k4, v4 = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
    out = CrossAttentionFunction.apply(q4, k4, v4, cu_seqlens_q, cu_seqlens_k, None, maxima,
                                       causal, scale, name)
    return out.transpose(1, 2).squeeze(0)


def cross_attention_padded(q: Tensor, k: Tensor, v: Tensor, *, k_lengths: Tensor | None = None,
                           scale: float | None = None, causal: bool = False,
                           backend: str = "auto") -> Tensor:
    """Cross-attention on padded batches in SDPA's layout, keys limited per sample.

    Args:
        q: (B, H, Lq, D); k, v: (B, H_kv, Lk, D), ``H % H_kv == 0``.
        k_lengths: optional (B,) int, ``0 <= k_lengths[b] <= Lk``: sample b's valid keys.
            Every query row is computed (queries are never masked by key padding).
        causal: bottom-right aligned within each sample's valid keys.

    Returns:
        (B, H, Lq, D); a sample with no keys gives 0 and no gradient.
    """
    call = _check_padded(q, k, v, k_lengths=k_lengths, scale=scale, causal=causal)
    name = PADDED.choose(backend, call)
    scale = default_scale(q, scale)
    if name == "reference":
        _check_k_lengths(k, k_lengths)
        return reference.cross_attention(q, k, v, k_lengths=k_lengths, causal=causal,
                                         scale=scale)
    return CrossAttentionFunction.apply(q, k, v, None, None, k_lengths, None, causal, scale,
                                        name)
