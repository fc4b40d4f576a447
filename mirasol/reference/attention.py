"""Attention, as the equations say: dense scores, an explicit boolean mask (the dense form
of the op's mask in :mod:`mirasol.masks`), softmax.

O(N^2) memory and float64-capable: this is the specification the kernels are tested
against, not something to run at scale.
"""

from __future__ import annotations

import torch
from einops import repeat

from mirasol import masks


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
                             chunk_size: int, *, window_chunks: int | None = None,
                             sink_tokens: int = 0, lengths: torch.Tensor | None = None,
                             cu_seqlens_q=None, cu_seqlens_k=None, teacher_forcing: bool = False,
                             scale: float | None = None) -> torch.Tensor:
    """Chunked causal attention and its family (``mirasol.masks.Rule``): the query at
    position p sees key j iff j // chunk_size <= p // chunk_size, within the window of
    chunks or among the sinks; teacher forcing's clean and noisy halves.

    Padded: q (B, H, Nq, D), k, v (B, H_kv, Nk, D), the queries the last Nq positions;
    lengths (B,) or None (Nq = Nk), rows at or past a sample's length are 0. Packed: q
    (total_q, H, D), k, v (total_k, H_kv, D), segments from cu_seqlens.
    """
    family = dict(window_chunks=window_chunks, sink_tokens=sink_tokens,
                  teacher_forcing=teacher_forcing)
    if cu_seqlens_q is not None:  # (total, H, D) -> (1, H, total, D)
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        mask = masks.chunked_causal_packed(q.shape[2], k.shape[2], chunk_size,
                                           cu_seqlens_q=cu_seqlens_q,
                                           cu_seqlens_k=cu_seqlens_k, **family)
        return masked_attention(q, k, v, mask.dense(), scale)[0].transpose(0, 1)
    mask = masks.chunked_causal(q.shape[2], chunk_size, lengths, q.device, k_rows=k.shape[2],
                                **family)
    return masked_attention(q, k, v, mask.dense(), scale)


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
        mask = masks.cross_attention(q.shape[2], k.shape[2], cu_seqlens_q=cu_seqlens_q,
                                     cu_seqlens_k=cu_seqlens_k, causal=causal)
    else:
        mask = masks.cross_attention_padded(q.shape[2], k.shape[2], k_lengths=k_lengths,
                                            causal=causal, device=q.device)
    out = masked_attention(q, k, v, mask.dense(), scale)
    return out[0].transpose(0, 1) if packed else out
