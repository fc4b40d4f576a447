"""Rotary position embedding (RoPE, Su et al. 2021), rotate-half convention."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotates each pair (x[i], x[i + D/2]) of a head by the angle ``pos * base^(-2i/D)``.

    No parameters or buffers, so modules that use it keep the state_dict of their
    non-rotary counterparts. Computed in fp32 (fp64 for fp64 inputs).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.base = head_dim, base

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (B, H, N, D); positions: (N,) or (B, N), default 0..N-1. Same shape and dtype."""
        acc = torch.promote_types(x.dtype, torch.float32)
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        exponents = torch.arange(0, self.head_dim, 2, dtype=acc, device=x.device) / self.head_dim
        angles = positions.to(acc)[..., None] * self.base ** -exponents  # (..., N, D/2)
        if angles.dim() == 3:  # per-sample positions: broadcast over heads
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.to(acc).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}"
