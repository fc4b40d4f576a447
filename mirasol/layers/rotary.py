"""Rotary position embedding (RoPE, Su et al. 2021), rotate-half convention."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotates each (x[i], x[i + D/2]) pair of a head by angle ``pos * base^(-2i/D)``.

    No parameters: the frequencies are a non-persistent buffer, so modules that use it keep
    the state_dict of their non-rotary counterparts.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (B, H, N, D); positions: (N,) or (B, N), default 0..N-1. Same shape and dtype."""
        n = x.shape[-2]
        if positions is None:
            positions = torch.arange(n, device=x.device)
        angles = positions.to(torch.float32)[..., None] * self.inv_freq  # (..., N, D/2)
        if angles.dim() == 3:  # per-sample positions: broadcast over heads
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return rotated.to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}"
