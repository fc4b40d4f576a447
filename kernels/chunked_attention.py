"""Chunked causal attention on the segmented-prefix kernels (``attention.py``).

Token ``i`` attends to token ``j`` iff ``j // chunk_size <= i // chunk_size`` (and both are
inside the sample's length): each sample is one segment, every row sees the keys up to
the end of its chunk. Layout as SDPA: ``q`` (B, H, N, D), ``k``/``v`` (B, H_kv, N, D).
"""

from __future__ import annotations

from torch import Tensor

from .attention import Segments, attn_bwd, attn_fwd


def chunked_segments(n: int, chunk_size: int, lengths: Tensor | None) -> Segments:
    return Segments(max_q=n, max_k=n, chunk=chunk_size, q_lens=lengths, k_lens=lengths)


def chunked_attn_fwd(q, k, v, chunk_size: int, scale: float, lengths=None):
    """Returns ``(o, lse)``: o like q, lse (B, H, N) fp32 (natural log, -inf past a
    sample's length, where o is 0)."""
    return attn_fwd(q, k, v, chunked_segments(q.shape[2], chunk_size, lengths), scale)


def chunked_attn_bwd(do, q, k, v, o, lse, chunk_size: int, scale: float, lengths=None):
    """Returns ``(dq, dk, dv)`` laid out like ``q, k, v``."""
    return attn_bwd(do, q, k, v, o, lse, chunked_segments(q.shape[2], chunk_size, lengths),
                    scale)
