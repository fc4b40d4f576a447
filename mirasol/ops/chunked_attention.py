"""Chunked causal attention, the block-causal family: argument checks, backend choice,
autograd, custom op.

The mask (:mod:`mirasol.masks`, DESIGN.md §2a): queries are the last ``q_len`` of a
sequence's ``k_len`` positions; with ``c(x) = x // chunk_size``, the query at position ``p``
sees key ``j`` iff ``c(j) <= c(p)`` and (no window, or ``c(p) - c(j) < window_chunks``, or
``j < sink_tokens``); teacher forcing's noisy half sees the clean chunks before its own and
its own noisy chunk. Chain of names::

    _attn_fwd_kernel / _attn_bwd_*_kernel                    (mirasol.kernels.attention,
                                                             shared with cross-attention)
    chunked_attn_fwd / chunked_attn_bwd                      (launchers)
    torch.ops.mirasol.chunked_attention_fwd / _bwd           (custom ops: torch.compile)
    ChunkedAttentionFunction                                 (autograd)
    chunked_causal_attention                                 (functional, here)
    ChunkedCausalSelfAttention                               (nn.Module, mirasol.layers)

Internally both layouts are 4-D: a packed (total, H, D) tensor travels as its
(1, H, total, D) view.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from mirasol import reference
from mirasol.masks import Rule
from mirasol.ops._backends import HEAD_DIM, Call, standard_backends
from mirasol.ops._checks import (Lengths, attention_call, check_attention_inputs, check_bool,
                                 check_non_negative_int, check_packed_inputs,
                                 check_positive_int, check_scale, check_values, default_scale,
                                 shape_of)
from mirasol.ops._dense import FUSED_FP32_BWD_MAX_HEAD_DIM, compute_dtypes, has_nan
from mirasol.ops._op import Op, maxima_or, register, segment_maxima
from mirasol.ops import _pieces

OP_NAME = "chunked_causal_attention"


# ----------------------------------------------------------------- the torch backend


def _segments(q: Tensor, k: Tensor, lengths, cu_q, cu_k):
    """(batch slice, first query row, q_len, first key row, k_len) of each segment of the
    4-D views: each packed segment, each sample with a length, or the whole batch."""
    if cu_q is not None:
        qb, kb = cu_q.tolist(), cu_k.tolist()
        return [(slice(0, 1), qb[s], qb[s + 1] - qb[s], kb[s], kb[s + 1] - kb[s])
                for s in range(len(qb) - 1)]
    if lengths is not None:
        return [(slice(b, b + 1), 0, n, 0, n) for b, n in enumerate(lengths.tolist())]
    return [(slice(None), 0, q.shape[2], 0, k.shape[2])]


def _plans(q: Tensor, k: Tensor, lengths, cu_q, cu_k, rule: Rule, backward: bool,
           nan: bool):
    """(batch slice, query rows, key rows, superblocks) of each segment: its fused calls as
    :func:`mirasol.ops._pieces.plan` chooses them (by the CPU cost model on CPU; one call
    per row span elsewhere, where the pieces run the math version). The token-causal split
    needs whole heads (no grouped queries), no NaN (the math version would take its mask
    whole) and a fused backward."""
    measured = q.device.type == "cpu"
    fused_backward = q.dtype != torch.float32 or q.shape[3] <= FUSED_FP32_BWD_MAX_HEAD_DIM
    token_causal = q.shape[1] == k.shape[1] and not nan and (fused_backward or not backward)
    for b, q0, q_len, k0, k_len in _segments(q, k, lengths, cu_q, cu_k):
        work = q[b].shape[0] * q.shape[1] * q.shape[3]
        yield (b, slice(q0, q0 + q_len), slice(k0, k0 + k_len),
               _pieces.plan(q_len, k_len, rule, work, q.shape[3], q.dtype, backward,
                            measured, token_causal))


def _torch_fwd(q, k, v, lengths, cu_q, cu_k, rule, scale):
    """Per superblock of each segment, its fused calls merged by their LSE in fp32
    (:mod:`mirasol.ops._pieces`), in the dtypes of :func:`~mirasol.ops._dense.compute_dtypes`: a bf16 output is
    rounded once per piece and once more where pieces merge."""
    dtype, (compute, acc) = q.dtype, compute_dtypes(q)
    q, k, v = (t.to(compute) for t in (q, k, v))
    # Laid out like q, as the triton backend's (and the fake's) outputs; rows that see
    # nothing stay 0, with lse = log 0.
    out = torch.zeros_like(q, dtype=acc)
    lse = torch.full(q.shape[:3], -math.inf, dtype=acc, device=q.device)
    nan = has_nan(q, k, v)
    for b, rows, keys, blocks in _plans(q, k, lengths, cu_q, cu_k, rule, False, nan):
        qs, ks, vs = q[b, :, rows], k[b, :, keys], v[b, :, keys]
        for block in blocks:
            at = slice(rows.start + block.r0, rows.start + block.r1)
            out[b, :, at], lse[b, :, at] = _pieces.forward(block, qs, ks, vs, scale, nan)
    return out.to(dtype), lse


def _torch_bwd(do, q, k, v, out, lse, lengths, cu_q, cu_k, rule, scale):
    """Per superblock and piece, the fused backward from the saved (merged) out and lse,
    in the dtypes of :func:`~mirasol.ops._dense.compute_dtypes`, the pieces' gradients summed in fp32."""
    dtype, (compute, acc) = q.dtype, compute_dtypes(q)
    do, q, k, v, out = (t.to(compute) for t in (do, q, k, v, out))
    dq, dk, dv = (torch.zeros_like(t, dtype=acc) for t in (q, k, v))  # laid out like them
    nan = has_nan(do, q, k, v)
    for b, rows, keys, blocks in _plans(q, k, lengths, cu_q, cu_k, rule, True, nan):
        for block in blocks:
            _pieces.backward(block, do[b, :, rows], q[b, :, rows], k[b, :, keys],
                             v[b, :, keys], out[b, :, rows], lse[b, :, rows], scale, nan,
                             dq[b, :, rows], dk[b, :, keys], dv[b, :, keys])
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


# ---------------------------------------------------------------- the triton backend


def _kernel_args(rule: Rule, lengths, cu_q, cu_k, max_q: int, max_k: int) -> dict:
    return dict(lengths=lengths, window=rule.window, sinks=rule.sinks,
                teacher_forcing=rule.teacher_forcing, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                max_seqlen_q=max_q, max_seqlen_k=max_k)


def _triton_fwd(q, k, v, lengths, cu_q, cu_k, rule, scale, max_q, max_k):
    from mirasol.kernels import chunked_attn_fwd

    return chunked_attn_fwd(q, k, v, rule.chunk, scale,
                            **_kernel_args(rule, lengths, cu_q, cu_k, max_q, max_k))


def _triton_bwd(do, q, k, v, out, lse, lengths, cu_q, cu_k, rule, scale, max_q, max_k):
    from mirasol.kernels import chunked_attn_bwd

    return chunked_attn_bwd(do, q, k, v, out, lse, rule.chunk, scale,
                            **_kernel_args(rule, lengths, cu_q, cu_k, max_q, max_k))


# Called as fwd(q, k, v, *layout, rule, scale, max_q, max_k) and bwd(do, q, k, v, out, lse,
# *layout, rule, scale, max_q, max_k). The maxima size the kernels' grid; the torch path
# walks the segments.
_FWD = {"triton": _triton_fwd, "torch": lambda *args: _torch_fwd(*args[:-2])}
_BWD = {"triton": _triton_bwd, "torch": lambda *args: _torch_bwd(*args[:-2])}


# ------------------------------------------------------------ the chain of the op


def _check(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, *,
           window_chunks: int | None = None, sink_tokens: int = 0,
           lengths: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
           cu_seqlens_k: Tensor | None = None, max_seqlen_q: int | None = None,
           max_seqlen_k: int | None = None, teacher_forcing: bool = False,
           scale: float | None = None) -> Call:
    op = OP_NAME
    check_positive_int(op, "chunk_size", chunk_size)
    if window_chunks is not None:
        check_positive_int(op, "window_chunks", window_chunks)
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"{op}: sink_tokens must be a non-negative int, got {sink_tokens!r}")
    check_bool(op, "teacher_forcing", teacher_forcing)
    check_scale(op, scale)
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k must be given together (the "
                         "packed layout)")
    if cu_seqlens_q is not None:
        if lengths is not None:
            raise ValueError(f"{op}: lengths is for the padded layout; packed segments take "
                             "their lengths from cu_seqlens_q/cu_seqlens_k")
        if teacher_forcing:
            raise ValueError(f"{op}: teacher_forcing takes a padded batch of equal-length "
                             "sequences (no cu_seqlens)")
        check_packed_inputs(op, q, k, v, cu_seqlens_q, cu_seqlens_k)
        for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if value is not None:
                check_non_negative_int(op, name, value)
        return attention_call(q, k, v)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if value is not None:
            raise ValueError(f"{op}: {name} is for the packed layout (with cu_seqlens)")
    check_attention_inputs(op, q, k, v, lengths=lengths, self_attention=False)
    n_q, n_k = q.shape[2], k.shape[2]
    if n_q > n_k:
        raise ValueError(f"{op}: q has {n_q} rows but k has {n_k}: the queries are the last "
                         "q_len of k_len positions, so q_len <= k_len")
    if lengths is not None and n_q != n_k:
        raise ValueError(f"{op}: lengths needs q and k of the same length (got {n_q} and "
                         f"{n_k}); for cached prefixes of several lengths, pack the batch "
                         "(cu_seqlens_q/cu_seqlens_k)")
    if teacher_forcing:
        if lengths is not None:
            raise ValueError(f"{op}: teacher_forcing takes a padded batch of equal-length "
                             "sequences (no lengths)")
        if n_q != n_k or n_q % 2:
            raise ValueError(f"{op}: teacher_forcing needs q and k of one even length 2L (L "
                             f"clean then L noisy tokens), got q {shape_of(q)} and k "
                             f"{shape_of(k)}")
    return attention_call(q, k, v)


OP = register(Op(OP_NAME, standard_backends(HEAD_DIM), _check))


def _check_values(q: Tensor, lengths: Tensor | None) -> None:
    if lengths is not None:
        check_values(OP_NAME, Lengths("lengths", lengths, q.shape[2]))


@torch.library.custom_op("mirasol::chunked_attention_fwd", mutates_args=())
def _chunked_attention_fwd(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor | None,
                           cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
                           maxima: Tensor | None, chunk_size: int, window_chunks: int | None,
                           sink_tokens: int, teacher_forcing: bool, scale: float,
                           backend: str) -> tuple[Tensor, Tensor]:
    """maxima: the longest query and key segments of packed inputs (segment_maxima)."""
    _check_values(q, lengths)
    rule = Rule(chunk_size, window_chunks, sink_tokens, teacher_forcing)
    return _FWD[backend](q, k, v, lengths, cu_seqlens_q, cu_seqlens_k, rule, scale,
                         *maxima_or(maxima, q.shape[2], k.shape[2]))


@_chunked_attention_fwd.register_fake
def _(q, k, v, lengths, cu_seqlens_q, cu_seqlens_k, maxima, chunk_size, window_chunks,
      sink_tokens, teacher_forcing, scale, backend):
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=lse_dtype)


@torch.library.custom_op("mirasol::chunked_attention_bwd", mutates_args=())
def _chunked_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                           lse: Tensor, lengths: Tensor | None, cu_seqlens_q: Tensor | None,
                           cu_seqlens_k: Tensor | None, maxima: Tensor | None,
                           chunk_size: int, window_chunks: int | None, sink_tokens: int,
                           teacher_forcing: bool, scale: float,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    rule = Rule(chunk_size, window_chunks, sink_tokens, teacher_forcing)
    return _BWD[backend](do, q, k, v, out, lse, lengths, cu_seqlens_q, cu_seqlens_k, rule,
                         scale, *maxima_or(maxima, q.shape[2], k.shape[2]))


@_chunked_attention_bwd.register_fake
def _(do, q, k, v, out, lse, lengths, cu_seqlens_q, cu_seqlens_k, maxima, chunk_size,
      window_chunks, sink_tokens, teacher_forcing, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class ChunkedAttentionFunction(torch.autograd.Function):
    """Autograd for the triton and torch backends on 4-D (batch, heads, rows, head_dim)
    views: the forward saves (out, lse), the backward recomputes probabilities from them
    (nothing of size N x N is kept)."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, cu_seqlens_q, cu_seqlens_k, maxima, chunk_size: int,
                window_chunks: int | None, sink_tokens: int, teacher_forcing: bool,
                scale: float, backend: str):
        rest = (chunk_size, window_chunks, sink_tokens, teacher_forcing, scale, backend)
        out, lse = torch.ops.mirasol.chunked_attention_fwd(
            q, k, v, lengths, cu_seqlens_q, cu_seqlens_k, maxima, *rest)
        ctx.save_for_backward(q, k, v, out, lse, lengths, cu_seqlens_q, cu_seqlens_k, maxima)
        ctx.rest = rest
        return out

    @staticmethod
    def backward(ctx, do):
        dq, dk, dv = torch.ops.mirasol.chunked_attention_bwd(do, *ctx.saved_tensors,
                                                             *ctx.rest)
        return dq, dk, dv, *(None,) * 10


def chunked_causal_attention(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, *,
                             window_chunks: int | None = None, sink_tokens: int = 0,
                             lengths: Tensor | None = None,
                             cu_seqlens_q: Tensor | None = None,
                             cu_seqlens_k: Tensor | None = None,
                             max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                             teacher_forcing: bool = False, scale: float | None = None,
                             backend: str = "auto") -> Tensor:
    """Chunked (block-) causal attention and its family: chunk windows, sink tokens, cached
    prefixes, packed sequences, teacher forcing (:mod:`mirasol.masks` defines each mask).

    ``out[i] = softmax_j(q[i] · k[j] · scale, j visible from i) @ v[j]``, with query heads
    ``h`` reading key/value head ``h // (H / H_kv)``. The queries of a sequence of
    ``k_len`` keys are its last ``q_len`` positions: row ``i`` at ``p = i + k_len - q_len``
    (``q_len = k_len``: ``p = i``; fewer queries: a chunk, or several, against a cached
    prefix, under the same rule). With ``c(x) = x // chunk_size``, ``j`` is visible from
    ``p`` iff ``c(j) <= c(p)`` and (``window_chunks`` is None, or ``c(p) - c(j) <
    window_chunks``, or ``j < sink_tokens``).

    Args:
        q: padded (B, H, Nq, D), or packed (total_q, H, D) with ``cu_seqlens_q``; fp16,
            bf16, fp32 (fp64 on the torch and reference backends); D <= 256.
        k, v: padded (B, H_kv, Nk, D), Nq <= Nk; or packed (total_k, H_kv, D);
            ``H % H_kv == 0`` (grouped-query attention).
        chunk_size: tokens per chunk, any positive int (need not divide N or the tile).
        window_chunks: a query sees its own chunk and the ``window_chunks - 1`` before it
            (None: every earlier chunk).
        sink_tokens: the first keys of each sequence, visible to every later chunk
            whatever the window (StreamingLLM's attention sinks; no effect without one).
        lengths: padded with Nq = Nk only: optional (B,) int, ``0 <= lengths[b] <= N``:
            sample b occupies positions [0, lengths[b]); rows past it are 0 and get zero
            gradients.
        cu_seqlens_q, cu_seqlens_k: the packed layout, int32 (S + 1,) as in flash-attn's
            varlen functions (chunks restart at each segment; segments may be empty; each
            has ``q_len <= k_len``). max_seqlen_q, max_seqlen_k: the longest segments,
            computed (one host read) when None, checked when given.
        teacher_forcing: each sequence is ``2L`` tokens, ``L`` clean then ``L`` noisy,
            chunked alike: a clean query follows the rule over clean keys; a noisy query of
            chunk ``c`` sees the clean keys of chunks ``< c`` (window and sinks counted from
            ``c``) and the noisy keys of chunk ``c`` (CausVid / Self-Forcing training).
            Padded, Nq = Nk even, no lengths.
        scale: score scale, default ``D ** -0.5``.
        backend: "auto" | "triton" | "torch" | "reference" (see ``mirasol.ops``).

    Returns:
        Laid out like q, in q's dtype. Accumulation is fp32 (fp64 for fp64 inputs); the error
        against a float64 oracle is at most twice that of the reference computed in q's
        dtype (``mirasol.testing``).

    Raises:
        ValueError / TypeError naming the argument, before any kernel runs: a chunk size,
        window or sink count that is not a positive (non-negative) int, q longer than k,
        lengths with Nq != Nk, teacher forcing on an odd or packed sequence, cu_seqlens
        that do not describe the tensors or give a segment more queries than keys.
    """
    call = _check(q, k, v, chunk_size, window_chunks=window_chunks, sink_tokens=sink_tokens,
                  lengths=lengths, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                  max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                  teacher_forcing=teacher_forcing, scale=scale)
    name = OP.choose(backend, call)
    scale = default_scale(q, scale)
    packed = cu_seqlens_q is not None
    maxima = None
    if packed:
        maxima = segment_maxima(OP_NAME, cu_seqlens_q, q.shape[0], max_seqlen_q, cu_seqlens_k,
                                k.shape[0], max_seqlen_k, queries_within_keys=True)
    if name == "reference":
        _check_values(q, lengths)
        return reference.chunked_causal_attention(
            q, k, v, chunk_size, window_chunks=window_chunks, sink_tokens=sink_tokens,
            lengths=lengths, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            teacher_forcing=teacher_forcing, scale=scale)
    if packed:
        q, k, v = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
    out = ChunkedAttentionFunction.apply(q, k, v, lengths, cu_seqlens_q, cu_seqlens_k, maxima,
                                         chunk_size, window_chunks, sink_tokens,
                                         teacher_forcing, scale, name)
    return out.transpose(1, 2).squeeze(0) if packed else out
