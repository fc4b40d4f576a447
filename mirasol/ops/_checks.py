"""Argument checks shared by the ops. Each raises before any kernel launches, with a
message naming the argument and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor


def shape_of(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_attention_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, *,
                           lengths: Tensor | None = None, self_attention: bool,
                           lengths_name: str = "lengths") -> None:
    """q (B, H, Nq, D), k and v (B, H_kv, Nk, D): same dtype (floating) and device,
    H % H_kv == 0; with ``self_attention`` also Nq == Nk. lengths: (B,) integer."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (batch, heads, seq, head_dim), "
                             f"got shape {shape_of(t)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name}.dtype ({t.dtype}) must match q.dtype ({q.dtype})")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
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
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            raise TypeError(f"{op}: {lengths_name} must be a torch.Tensor or None, "
                            f"got {type(lengths).__name__}")
        if lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: {lengths_name} must be int32 or int64, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"{op}: {lengths_name} must have shape ({B},) (one per sample), got "
                             f"{shape_of(lengths)}")
        if lengths.device != q.device:
            raise ValueError(f"{op}: {lengths_name} is on {lengths.device} but q is on {q.device}")


def check_lengths_values(lengths: Tensor, n: int, name: str = "lengths") -> None:
    """0 <= lengths <= n. Reads the values (a device sync on CUDA), so it runs inside the
    op's eager implementation, out of torch.compile's graph; skipped while a CUDA graph is
    being captured."""
    if _skip_value_checks(lengths):
        return
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise ValueError(f"{name} must lie in [0, {n}] (the sequence length), got "
                         f"{lengths.tolist()}")


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
        if not isinstance(cu, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise TypeError(f"{op}: {name} must be int32 (as in flash-attn), got {cu.dtype}")
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"{op}: {name} must be 1-D with batch + 1 >= 2 entries, got "
                             f"shape {shape_of(cu)}")
        if cu.device != q.device:
            raise ValueError(f"{op}: {name} is on {cu.device} but q is on {q.device}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k describe different batch sizes "
                         f"({cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1} segments)")


def _skip_value_checks(t: Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_cu_seqlens_values(name: str, cu: Tensor, total: int) -> int:
    """0 = cu[0] <= cu[1] <= ... <= cu[-1] = total; returns the longest segment. Reads the
    values, so it runs inside the op's eager implementation (see check_lengths_values)."""
    values = cu.tolist()
    if values[0] != 0 or values[-1] != total or any(a > b for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must start at 0, never decrease and end at the number of "
                         f"tokens ({total}), got {values}")
    return max(b - a for a, b in zip(values, values[1:]))
