"""Attention test problems as plain data: what the hypothesis strategies draw and what
``mirasol check`` runs (no hypothesis needed here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
