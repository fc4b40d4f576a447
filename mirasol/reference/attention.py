"""Attention, as the equations say: dense scores, an explicit boolean mask, softmax.

O(N^2) memory and float64-capable: this is the specification the kernels are tested
against, not something to run at scale.
"""

from __future__ import annotations

import torch
from einops import repeat


def chunked_causal_mask(n: int, chunk_size: int, device=None) -> torch.Tensor:
    """mask[i, j] = chunk(j) <= chunk(i), chunk(x) = x // chunk_size. Shape (n, n)."""
    chunk = torch.arange(n, device=device) // chunk_size
    return chunk[None, :] <= chunk[:, None]


def length_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """valid[b, i] = i < lengths[b]. Shape (B, n)."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + log mask) v.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nk, D) with H % H_kv == 0 (each group of
    H / H_kv query heads shares a key/value head); mask: bool, broadcastable to
    (B, H, Nq, Nk), True = may attend. A row with nothing to attend to gives 0.
    """
    group = q.shape[1] // k.shape[1]
    k = repeat(k, "b h n d -> b (h g) n d", g=group)
    v = repeat(v, "b h n d -> b (h g) n d", g=group)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    mask = mask.expand_as(scores)
    has_key = mask.any(-1, keepdim=True)
    # A fully masked row would be softmax of all -inf = NaN (and NaN gradients, even
    # behind a where). Give it finite scores, then zero its probabilities.
    scores = torch.where(mask, scores, float("-inf"))
    scores = torch.where(has_key, scores, 0.0)
    probs = torch.softmax(scores, dim=-1) * mask
    return torch.einsum("bhij,bhjd->bhid", probs, v)


def chunked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             chunk_size: int, *, scale: float | None = None,
                             lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Chunked causal attention: token i attends to token j iff
    j // chunk_size <= i // chunk_size (and both are inside the sample's length).

    q: (B, H, N, D); k, v: (B, H_kv, N, D); lengths: (B,) or None. Rows at or past a
    sample's length are 0.
    """
    n = q.shape[2]
    mask = chunked_causal_mask(n, chunk_size, q.device)[None, None]
    if lengths is not None:
        valid = length_mask(lengths, n)
        mask = mask & valid[:, None, :, None] & valid[:, None, None, :]
    return masked_attention(q, k, v, mask, scale)
