"""Hypothesis strategies for attention problems (requires ``hypothesis``).

``attention_cases(...)`` draws an :class:`AttentionCase`: shapes, grouped-query heads,
chunk size, per-sample lengths, dtype and memory layout; ``case.tensors(device)`` builds
deterministic inputs from the case's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

# Layouts an input can arrive in: contiguous (B, H, N, D); "bnhd": a (B, N, H, D) buffer
# viewed as (B, H, N, D) (projections reshaped without a copy); "padded": a view into a
# buffer with a larger head dim (non-unit row stride, gaps between rows).
LAYOUTS = ("contiguous", "bnhd", "padded")
HEAD_DIMS = (16, 24, 32, 40, 64, 80, 96, 112, 128, 256)


@dataclass(frozen=True)
class AttentionCase:
    batch: int
    heads: int
    kv_heads: int
    seqlen: int
    head_dim: int
    chunk_size: int
    lengths: tuple[int, ...] | None
    dtype: torch.dtype
    layout: str
    seed: int

    def _make(self, heads: int, gen: torch.Generator, device) -> torch.Tensor:
        B, N, D = self.batch, self.seqlen, self.head_dim
        if self.layout == "bnhd":
            x = torch.randn(B, N, heads, D, generator=gen).transpose(1, 2)
        elif self.layout == "padded":
            x = torch.randn(B, heads, N, D + 8, generator=gen)[..., 3:3 + D]
        else:
            x = torch.randn(B, heads, N, D, generator=gen)
        return x.to(device=device, dtype=self.dtype)

    def tensors(self, device="cpu"):
        """(q, k, v, lengths) for this case; lengths is an int32 tensor or None."""
        gen = torch.Generator().manual_seed(self.seed)
        q = self._make(self.heads, gen, device)
        k = self._make(self.kv_heads, gen, device)
        v = self._make(self.kv_heads, gen, device)
        lengths = (None if self.lengths is None
                   else torch.tensor(self.lengths, dtype=torch.int32, device=device))
        return q, k, v, lengths


@st.composite
def attention_cases(draw, *, max_batch: int = 3, max_heads: int = 4, max_seqlen: int = 80,
                    head_dims=HEAD_DIMS, dtypes=(torch.float32, torch.float16),
                    layouts=LAYOUTS, max_chunk: int | None = None,
                    allow_lengths: bool = True) -> AttentionCase:
    """Attention problems for chunked causal attention. Chunk sizes range from 1 to past
    the sequence length (so one chunk and one token per chunk are both drawn)."""
    batch = draw(st.integers(1, max_batch))
    kv_heads = draw(st.integers(1, max_heads))
    group = draw(st.sampled_from([g for g in (1, 2, 4) if kv_heads * g <= max(max_heads, 1)]
                                 or [1]))
    seqlen = draw(st.integers(1, max_seqlen))
    chunk_size = draw(st.integers(1, max_chunk or seqlen + 4))
    lengths = None
    if allow_lengths and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(0, seqlen), min_size=batch, max_size=batch)))
    return AttentionCase(
        batch=batch, heads=kv_heads * group, kv_heads=kv_heads, seqlen=seqlen,
        head_dim=draw(st.sampled_from(head_dims)), chunk_size=chunk_size, lengths=lengths,
        dtype=draw(st.sampled_from(dtypes)), layout=draw(st.sampled_from(layouts)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
