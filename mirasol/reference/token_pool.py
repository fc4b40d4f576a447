"""Token reduction (TokenLearner pooling) and TokenLearner v1.1, as the equations say."""

from __future__ import annotations

import torch
from torch import nn


def token_pool(x: torch.Tensor, logits: torch.Tensor, *, cu_seqlens=None,
               lengths=None) -> torch.Tensor:
    """out[b, j] = sum_n softmax_n(logits[b, n, j]) * x[b, n], over segment b's tokens.

    Padded: x (B, N, d), logits (B, N, m), optional lengths (B,). Packed: x (total, d),
    logits (total, m), cu_seqlens (B + 1,). Returns (B, m, d); an empty segment gives 0.
    """
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        segments = [(x[s:e], logits[s:e]) for s, e in zip(bounds, bounds[1:])]
    else:
        counts = [x.shape[1]] * x.shape[0] if lengths is None else lengths.tolist()
        segments = [(x[b, :n], logits[b, :n]) for b, n in enumerate(counts)]
    # softmax over tokens: each column of weights sums to 1 (an empty segment: a sum of
    # nothing, 0).
    return torch.stack([torch.einsum("nj,nd->jd", torch.softmax(ss, dim=0), xs)
                        for xs, ss in segments])


class TokenLearner(nn.Module):
    """TokenLearner v1.1 (Ryoo et al.): weights = softmax over tokens of
    MLP(LayerNorm(x)), one column per output token; output = weightsᵀ · x.

    The plain-PyTorch twin of ``mirasol.layers.TokenLearner`` (same parameters and
    state_dict keys: ``norm``, ``mlp.fc1``, ``mlp.fc2``).
    """

    def __init__(self, dim: int, num_tokens: int, bottleneck_dim: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, bottleneck_dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(bottleneck_dim, num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> (B, num_tokens, dim)."""
        weights = torch.softmax(self.mlp(self.norm(x)), dim=1)  # (B, N, m), over tokens
        return torch.einsum("bnj,bnd->bjd", weights, x)
