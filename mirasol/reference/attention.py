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

    NaN: a masked-out pair has no term at all, in the output and in every gradient, so a
    NaN reaches exactly what depends on it. Products with a masked pair's 0 (0 * NaN) would
    carry it further; when q, k or v holds a NaN the products are therefore formed pair by
    pair with the masked ones removed by ``where`` (O(B H Nq Nk D) memory: tests only).
    """
    group = q.shape[1] // k.shape[1]
    k = repeat(k, "b h n d -> b (h g) n d", g=group)
    v = repeat(v, "b h n d -> b (h g) n d", g=group)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    exact = any(torch.isnan(t).any() for t in (q, k, v))
    mask = mask.expand(*q.shape[:3], k.shape[2])
    if exact:
        pairs = mask[..., None]
        scores = torch.where(pairs, q[..., :, None, :], 0).mul(
            torch.where(pairs, k[..., None, :, :], 0)).sum(-1) * scale
    else:
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    has_key = mask.any(-1, keepdim=True)
    # A fully masked row would be softmax of all -inf = NaN (and NaN gradients, even
    # behind a where). Give it finite scores, then zero its probabilities.
    scores = torch.where(mask, scores, float("-inf"))
    scores = torch.where(has_key, scores, 0.0)
    probs = torch.where(mask, torch.softmax(scores, dim=-1), 0.0)
    if exact:
        return (probs[..., None] * torch.where(pairs, v[..., None, :, :], 0)).sum(-2)
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


def segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """seg[i] = b for cu_seqlens[b] <= i < cu_seqlens[b + 1]. Shape (total,)."""
    return torch.searchsorted(cu_seqlens[1:], torch.arange(total, device=cu_seqlens.device),
                              right=True)


def cross_attention_mask(q_rows: int, k_rows: int, *, cu_seqlens_q=None, cu_seqlens_k=None,
                         k_lengths=None, causal: bool = False) -> torch.Tensor:
    """mask[b, 0, i, j]: query i may attend to key j.

    Packed (cu_seqlens given): i and j lie in the same segment — a block-diagonal
    (1, 1, total_q, total_k) mask. Padded: j < k_lengths[b] — (B, 1, q_rows, k_rows).
    causal: additionally j <= i + (k_len - q_len), positions counted within the segment
    (bottom-right alignment: the last query sees every key).
    """
    if cu_seqlens_q is not None:
        seg_q = segment_ids(cu_seqlens_q, q_rows)
        seg_k = segment_ids(cu_seqlens_k, k_rows)
        pos_q = torch.arange(q_rows, device=seg_q.device) - cu_seqlens_q[seg_q]
        pos_k = torch.arange(k_rows, device=seg_k.device) - cu_seqlens_k[seg_k]
        len_q, len_k = cu_seqlens_q.diff()[seg_q], cu_seqlens_k.diff()[seg_k]
        mask = seg_q[:, None] == seg_k[None, :]
        if causal:
            mask &= pos_k[None, :] <= pos_q[:, None] + len_k[None, :] - len_q[:, None]
        return mask[None, None]
    device = None if k_lengths is None else k_lengths.device
    lengths = (torch.full((1,), k_rows, device=device) if k_lengths is None else k_lengths)
    j, i = torch.arange(k_rows, device=device), torch.arange(q_rows, device=device)
    mask = j[None, None, :] < lengths[:, None, None]  # (B, 1, k_rows)
    if causal:
        mask = mask & (j[None, None, :] <= i[None, :, None] + lengths[:, None, None] - q_rows)
    return mask[:, None]


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cu_seqlens_q=None,
                    cu_seqlens_k=None, k_lengths=None, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Each query segment attends to its own key segment only.

    Packed: q (total_q, H, D), k, v (total_k, H_kv, D), segments from cu_seqlens (int,
    (B + 1,)). Padded: q (B, H, Lq, D), k, v (B, H_kv, Lk, D), keys limited to k_lengths.
    A query with no key to see (an empty key segment) gives 0.
    """
    packed = q.dim() == 3
    if packed:  # (total, H, D) -> (1, H, total, D)
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
    mask = cross_attention_mask(q.shape[2], k.shape[2], cu_seqlens_q=cu_seqlens_q,
                                cu_seqlens_k=cu_seqlens_k, k_lengths=k_lengths, causal=causal)
    out = masked_attention(q, k, v, mask, scale)
    return out[0].transpose(0, 1) if packed else out
