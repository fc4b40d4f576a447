"""Cross-attention on the segmented-prefix kernels (``attention.py``): each query segment
sees all keys of its own key segment (``causal``: bottom-right aligned, query i of a
segment sees keys j <= i + k_len - q_len).

Tensors are 4-D: the (1, H, total, D) views of packed (total, H, D) tensors with int32
``cu_seqlens`` (flash-attn's varlen convention), or padded (B, H, L, D) with optional
per-sample key lengths (queries are never limited).
"""

from __future__ import annotations

from torch import Tensor

from .attention import NO_CHUNKS, Segments, attn_bwd, attn_fwd


def cross_segments(*, cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
                   k_lengths: Tensor | None, max_seqlen_q: int, max_seqlen_k: int,
                   causal: bool) -> Segments:
    return Segments(max_q=max_seqlen_q, max_k=max_seqlen_k, chunk=1 if causal else NO_CHUNKS,
                    causal=causal, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, k_lens=k_lengths)


def cross_attn_fwd(q, k, v, scale: float, **segments):
    """Returns ``(o, lse)``: o laid out like q; lse (B, H, L) fp32, natural log, -inf for a
    row that sees no key (its o is 0)."""
    return attn_fwd(q, k, v, cross_segments(**segments), scale)


def cross_attn_bwd(do, q, k, v, o, lse, scale: float, **segments):
    """Returns ``(dq, dk, dv)`` laid out like ``q, k, v``."""
    return attn_bwd(do, q, k, v, o, lse, cross_segments(**segments), scale)
