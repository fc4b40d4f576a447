"""Argument checks shared by the ops. Each raises before any kernel launches, with a
message naming the argument and what was expected.

Two kinds: checks of shapes, dtypes and devices, which read no tensor value (they run in
the functional, and torch.compile traces them away), and :func:`check_values`, which
reads index tensors (cu_seqlens, lengths) in one host transfer — a device sync on CUDA —
so it runs inside each op's forward custom op (and once on the reference path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mirasol.ops._backends import ELEMENTS, HEAD_DIM, Call, span


def shape_of(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(op: str, name: str, t, *, dim: int | None = None, layout: str = "") -> None:
    """A floating-point tensor, of ``dim`` dimensions (``layout`` names them) if given."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D {layout}, got shape {shape_of(t)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` has ``ref``'s dtype and device."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name}.dtype ({t.dtype}) must match {ref_name}.dtype "
                        f"({ref.dtype})")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_lengths(op: str, name: str, lengths, batch: int, ref_name: str, ref: Tensor) -> None:
    """Optional per-sample lengths: None or an int32/int64 (batch,) tensor on ref's device."""
    if lengths is None:
        return
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, "
                        f"got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: {name} must be int32 or int64, got {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"{op}: {name} must have shape ({batch},) (one per sample), got "
                         f"{shape_of(lengths)}")
    if lengths.device != ref.device:
        raise ValueError(f"{op}: {name} is on {lengths.device} but {ref_name} is on "
                         f"{ref.device}")


def check_cu_seqlens(op: str, name: str, cu, ref_name: str, ref: Tensor) -> None:
    """Packed segments' bounds: an int32 (batch + 1,) tensor on ref's device, as in
    flash-attn's varlen functions."""
    if not isinstance(cu, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{op}: {name} must be int32 (as in flash-attn), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{op}: {name} must be 1-D with batch + 1 >= 2 entries, got "
                         f"shape {shape_of(cu)}")
    if cu.device != ref.device:
        raise ValueError(f"{op}: {name} is on {cu.device} but {ref_name} is on {ref.device}")


def check_positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def check_non_negative_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{op}: {name} must be a non-negative int or None, got {value!r}")


def check_bool(op: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")


def check_scale(op: str, scale) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{op}: scale must be a float or None, got {type(scale).__name__}")


def check_attention_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, *,
                           lengths: Tensor | None = None, self_attention: bool,
                           lengths_name: str = "lengths") -> None:
    """q (B, H, Nq, D), k and v (B, H_kv, Nk, D): same dtype (floating) and device,
    H % H_kv == 0; with ``self_attention`` also Nq == Nk. lengths: (B,) integer."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, dim=4, layout="(batch, heads, seq, head_dim)")
    for name, t in (("k", k), ("v", v)):
        check_like(op, name, t, "q", q)
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {shape_of(k)} and "
                         f"{shape_of(v)}")
    B, H, Nq, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"{op}: k has batch size {k.shape[0]} but q has {B}")
    if k.shape[3] != D:
        raise ValueError(f"{op}: k has head dim {k.shape[3]} but q has {D}")
    if D == 0:
        raise ValueError(f"{op}: head dim must be positive, got q of shape {shape_of(q)}")
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"{op}: the number of query heads ({H}) must be a multiple of the "
                         f"number of key/value heads ({k.shape[1]})")
    if self_attention and k.shape[2] != Nq:
        raise ValueError(f"{op}: self-attention needs k and q of the same length, got "
                         f"{k.shape[2]} and {Nq}")
    check_lengths(op, lengths_name, lengths, B, "q", q)


def check_packed_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                        cu_seqlens_k: Tensor) -> None:
    """q (total_q, H, D), k and v (total_k, H_kv, D) as in flash-attn's varlen functions;
    cu_seqlens_q/k int32 (B + 1,) on the same device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if isinstance(t, Tensor) and t.dim() != 3:
            raise ValueError(f"{op}: {name} must be 3-D (total_tokens, heads, head_dim) in "
                             f"the packed layout, got shape {shape_of(t)}")
    # The 4-D views the kernels read: (1, heads, total, head_dim).
    q4, k4, v4 = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
    check_attention_inputs(op, q4, k4, v4, self_attention=False)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_cu_seqlens(op, name, cu, "q", q)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k describe different batch sizes "
                         f"({cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1} segments)")


def attention_call(q: Tensor, k: Tensor, v: Tensor) -> Call:
    """The Call of an attention op on checked q, k, v (any layout: outputs and gradients
    are laid out like them)."""
    return Call.of(q, {HEAD_DIM.name: q.shape[-1],
                       ELEMENTS.name: max(span(t) for t in (q, k, v))})


def default_scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


# ------------------------------------------------------------------------ value checks


@dataclass(frozen=True)
class Packed:
    """cu_seqlens over ``total`` rows: 0 = cu[0] <= cu[1] <= ... <= cu[-1] = total. A
    given ``max_seqlen`` (named ``max_name``) must be at least the longest segment."""

    name: str
    cu: Tensor
    total: int
    max_seqlen: int | None = None
    max_name: str = "max_seqlen"


@dataclass(frozen=True)
class Lengths:
    """Per-sample lengths of a padded batch of ``n`` rows: 0 <= lengths <= n."""

    name: str
    lengths: Tensor
    n: int


def _capturing(t: Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_values(op: str, *indices: Packed | Lengths,
                 queries_within_keys: bool = False) -> list[int]:
    """Checks every index tensor's values, read in one host transfer, and returns per
    index the bound the kernels' grid needs: the longest segment of a Packed, n for
    Lengths. ``queries_within_keys`` (two Packed, queries then keys): each query segment is
    no longer than its key segment (queries are the last of its positions). While a CUDA
    graph is being captured nothing can be read: lengths go unchecked, and a Packed needs
    its max_seqlen given."""
    tensors = [ix.cu if isinstance(ix, Packed) else ix.lengths for ix in indices]
    if any(_capturing(t) for t in tensors):
        return [_bound_unread(op, ix) for ix in indices]
    flat = torch.cat([t.reshape(-1).long() for t in tensors]).tolist() if tensors else []
    bounds, start, read = [], 0, []
    for ix, t in zip(indices, tensors):
        values, start = flat[start:start + t.numel()], start + t.numel()
        read.append(values)
        bounds.append(_check_packed(op, ix, values) if isinstance(ix, Packed)
                      else _check_lengths(op, ix, values))
    if queries_within_keys:
        _check_queries_within_keys(op, indices, *read)
    return bounds


def _check_queries_within_keys(op: str, indices, cu_q: list[int], cu_k: list[int]) -> None:
    for s, (q0, q1, k0, k1) in enumerate(zip(cu_q, cu_q[1:], cu_k, cu_k[1:])):
        if q1 - q0 > k1 - k0:
            raise ValueError(f"{op}: segment {s} has {q1 - q0} queries but {k1 - k0} keys "
                             f"({indices[0].name}, {indices[1].name}): its queries are the "
                             "last of its positions, so it needs q_len <= k_len")


def _bound_unread(op: str, ix: Packed | Lengths) -> int:
    if isinstance(ix, Lengths):
        return ix.n
    if ix.max_seqlen is None:
        raise ValueError(f"{op}: {ix.max_name} must be given while a CUDA graph is being "
                         f"captured ({ix.name} cannot be read then)")
    return ix.max_seqlen


def _check_lengths(op: str, ix: Lengths, values: list[int]) -> int:
    if values and (min(values) < 0 or max(values) > ix.n):
        raise ValueError(f"{op}: {ix.name} must lie in [0, {ix.n}] (the sequence length), "
                         f"got {values}")
    return ix.n


def _check_packed(op: str, ix: Packed, values: list[int]) -> int:
    if values[0] != 0 or values[-1] != ix.total or any(a > b for a, b in
                                                       zip(values, values[1:])):
        raise ValueError(f"{op}: {ix.name} must start at 0, never decrease and end at the "
                         f"number of tokens ({ix.total}), got {values}")
    longest = max(b - a for a, b in zip(values, values[1:]))
    if ix.max_seqlen is not None and ix.max_seqlen < longest:
        raise ValueError(f"{op}: {ix.max_name} = {ix.max_seqlen} is shorter than the longest "
                         f"segment ({longest}): rows past it would be silently skipped")
    return longest
