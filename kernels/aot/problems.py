"""Problems on meta tensors: the tensors an op hands its launchers, with no memory behind
them, so that its launches can be built (and cross-compiled) for any size and any GPU.

One problem per op, in each layout the ops (and the C API) offer. Every tensor comes from
a factory ``tensor(name, *shape, dtype=...)``, named as the C API names its arguments; the
default makes meta tensors, and a caller may tag them (tests/test_aot_library.py tells
which tensor each pointer argument of a launch is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .._launch import Capability, Launch

ATTENTION_LAYOUTS = ("chunked", "chunked_lengths", "chunked_window", "chunked_teacher",
                     "cross", "cross_causal")
TOKEN_POOL_LAYOUTS = ("padded", "padded_lengths", "packed")

TensorFactory = Callable[..., Tensor]


def meta(name: str, *shape: int, dtype: torch.dtype) -> Tensor:
    """A tensor of this shape and dtype with no storage (``name`` is for other factories)."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _check_layout(layout: str, known: tuple[str, ...]) -> None:
    if layout not in known:
        raise ValueError(f"layout must be one of {known}, got {layout!r}")


@dataclass(frozen=True)
class AttentionProblem:
    """An attention problem. Padded layouts ("chunked", "chunked_lengths": chunked causal
    attention with chunk size ``chunk``, with or without per-sample lengths;
    "chunked_window": with lengths, a window of ``window`` chunks and ``sinks`` sinks;
    "chunked_teacher": teacher forcing's noisy queries against the clean keys, first-aligned,
    the window one chunk shorter, every output in fp32 as teacher forcing merges its pieces
    in fp32): q (segments, heads, q_rows, head_dim), k and v (segments, kv_heads, k_rows,
    head_dim). ``splits`` > 1: the split-KV forward alone, its partial outputs in fp32.
    Packed layouts ("cross", "cross_causal": cross-attention on ``cu_seqlens`` segments,
    plain or bottom-right causal): q (q_rows, heads, head_dim), k and v (k_rows, kv_heads,
    head_dim) in all, no segment longer than ``max_q`` / ``max_k`` rows (default: all of
    them), passed as their (1, heads, total, head_dim) views, as the op passes them."""

    layout: str
    segments: int
    heads: int
    kv_heads: int
    head_dim: int
    q_rows: int
    k_rows: int | None = None  # default: q_rows
    max_q: int | None = None
    max_k: int | None = None
    chunk: int | None = None  # the chunked layouts' chunk size
    window: int = 4  # chunked_window's window (chunks) and sink tokens
    sinks: int = 512
    splits: int = 1

    def launches(self, dtype: torch.dtype, capability: Capability, *,
                 scale: float | None = None, tensor: TensorFactory = meta
                 ) -> dict[str, Launch]:
        """The forward and the three backward launches, and the NaN repair pass of each but
        the delta kernel, by kernel name, with the configs ``capability`` selects (the
        forward and its repair pass alone with ``splits``); ``scale`` defaults to
        head_dim ** -0.5."""
        from ..attention import (Segments, attn_bwd_delta_launch,
                                 attn_bwd_dkdv_launch, attn_bwd_dq_launch, attn_fwd_launch)

        _check_layout(self.layout, ATTENTION_LAYOUTS)
        B, H, H_kv, D = self.segments, self.heads, self.kv_heads, self.head_dim
        n_q = self.q_rows
        n_k = n_q if self.k_rows is None else self.k_rows
        packed = self.layout.startswith("cross")
        if packed:
            def rows(name, total, heads, dt=dtype):
                return tensor(name, total, heads, D, dtype=dt).unsqueeze(0).transpose(1, 2)

            causal = self.layout == "cross_causal"
            seg = Segments.cross(cu_seqlens_q=tensor("cu_seqlens_q", B + 1, dtype=torch.int32),
                                 cu_seqlens_k=tensor("cu_seqlens_k", B + 1, dtype=torch.int32),
                                 k_lengths=None,
                                 max_seqlen_q=n_q if self.max_q is None else self.max_q,
                                 max_seqlen_k=n_k if self.max_k is None else self.max_k,
                                 causal=causal)
            lse_shape = (1, H, n_q)
        else:
            if self.chunk is None:
                raise ValueError(f"layout {self.layout!r} needs a chunk size")

            def rows(name, n, heads, dt=dtype):
                return tensor(name, B, heads, n, D, dtype=dt)

            teacher = self.layout == "chunked_teacher"
            lengths = (None if self.layout in ("chunked", "chunked_teacher")
                       else tensor("lengths", B, dtype=torch.int32))
            windowed = self.layout in ("chunked_window", "chunked_teacher")
            seg = Segments.chunked(n_q, self.chunk, lengths, max_k=n_k,
                                   window=self.window - teacher if windowed else None,
                                   sinks=self.sinks if windowed else 0, top_left=teacher)
            lse_shape = (B, H, n_q)
        # Teacher forcing's pieces write fp32 (kernels/attention.py), as split-KV partials do.
        out = torch.float32 if self.layout == "chunked_teacher" or self.splits > 1 else dtype
        q, do = (rows(name, n_q, H) for name in ("q", "do"))
        o, dq = (rows(name, n_q, H, out) for name in ("o", "dq"))
        k, v = (rows(name, n_k, H_kv) for name in ("k", "v"))
        dk, dv = (rows(name, n_k, H_kv, out) for name in ("dk", "dv"))
        lse, delta = (tensor(name, *lse_shape, dtype=torch.float32) for name in ("lse", "delta"))
        scale = D ** -0.5 if scale is None else scale
        if self.splits > 1:
            o, lse = (tensor(name, self.splits, *t.shape, dtype=torch.float32)
                      for name, t in (("o", o), ("lse", lse)))
            return {"attn_fwd" + suffix: attn_fwd_launch(q, k, v, o, lse, seg, scale,
                                                         capability=capability,
                                                         exact_nan=exact_nan, splits=self.splits)
                    for exact_nan, suffix in ((False, ""), (True, "_nan"))}
        launches = {"attn_bwd_delta": attn_bwd_delta_launch(o, do, delta, capability=capability)}
        for exact_nan, suffix in ((False, ""), (True, "_nan")):  # the NaN repair passes
            launches |= {
                "attn_fwd" + suffix: attn_fwd_launch(q, k, v, o, lse, seg, scale,
                                                     capability=capability, exact_nan=exact_nan),
                "attn_bwd_dkdv" + suffix: attn_bwd_dkdv_launch(
                    q, k, v, do, lse, delta, dk, dv, seg, scale, capability=capability,
                    exact_nan=exact_nan),
                "attn_bwd_dq" + suffix: attn_bwd_dq_launch(
                    q, k, v, do, lse, delta, dq, seg, scale, capability=capability,
                    exact_nan=exact_nan),
            }
        return launches


@dataclass(frozen=True)
class TokenPoolProblem:
    """A token-pooling problem: ``segments`` segments of ``dim``-wide tokens pooled into
    ``num_tokens`` output tokens each. Padded layouts ("padded", "padded_lengths": with or
    without per-segment lengths): x (segments, rows, dim), logits (segments, rows,
    num_tokens). Packed ("packed", ``cu_seqlens``): x (rows, dim) in all, no segment longer
    than ``max_rows`` (default: all of them)."""

    layout: str
    segments: int
    rows: int
    dim: int
    num_tokens: int
    max_rows: int | None = None

    def launches(self, dtype: torch.dtype, capability: Capability, *,
                 tensor: TensorFactory = meta) -> dict[str, Launch]:
        """The forward and backward launches, by kernel name, with the configs
        ``capability`` selects."""
        from ..token_pool import token_pool_bwd_launch, token_pool_fwd_launch

        _check_layout(self.layout, TOKEN_POOL_LAYOUTS)
        B, M = self.segments, self.num_tokens
        packed = self.layout == "packed"
        rows = (self.rows,) if packed else (B, self.rows)
        x, dx = (tensor(name, *rows, self.dim, dtype=dtype) for name in ("x", "dx"))
        logits, dlogits = (tensor(name, *rows, M, dtype=dtype) for name in ("logits", "dlogits"))
        out, dout = (tensor(name, B, M, self.dim, dtype=dtype) for name in ("out", "dout"))
        stats = tensor("stats", B, 2, M, dtype=torch.float32)
        cu = tensor("cu_seqlens", B + 1, dtype=torch.int32) if packed else None
        lengths = (tensor("lengths", B, dtype=torch.int32)
                   if self.layout == "padded_lengths" else None)
        longest = self.rows if self.max_rows is None else self.max_rows
        return {
            "token_pool_fwd": token_pool_fwd_launch(x, logits, out, stats, cu, lengths,
                                                    capability=capability),
            "token_pool_bwd": token_pool_bwd_launch(x, logits, out, dout, stats, dx, dlogits,
                                                    cu, lengths, longest,
                                                    capability=capability),
        }
