"""Unmasked attention with its log-sum-exp, forward and backward: the building block of the
``torch`` backends, which split a masked problem into unmasked pieces (a chunk's queries
against its visible prefix, one segment against its keys) and run each here.

On CPU this calls PyTorch's fused flash-attention kernel for CPU, which returns the
log-sum-exp and has a backward that consumes it (no N x N tensor anywhere). Elsewhere it
falls back to a piece-sized math implementation (scores for one piece at a time).
"""

from __future__ import annotations

import torch
from einops import rearrange


def _fold_groups(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    # The query heads that share a key/value head attend to the same keys, so they can
    # be stacked as extra rows: (B, H, M, ...) -> (B, H_kv, G*M, ...). No K/V copy.
    return rearrange(x, "b (h g) m ... -> b h (g m) ...", h=kv_heads)


def _unfold_groups(x: torch.Tensor, rows: int) -> torch.Tensor:
    return rearrange(x, "b h (g m) ... -> b (h g) m ...", m=rows)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """o = softmax(q kᵀ · scale) v and lse = logsumexp(q kᵀ · scale) over all keys.

    q: (B, H, M, D); k, v: (B, H_kv, N, D), N >= 1. Returns o (B, H, M, D) in q's dtype
    and lse (B, H, M) in fp32 (fp64 for fp64 inputs).
    """
    rows, kv_heads = q.shape[2], k.shape[1]
    qf = _fold_groups(q, kv_heads)
    if q.device.type == "cpu":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qf, k, v, 0.0, False, scale=scale)
    else:
        acc = torch.promote_types(q.dtype, torch.float32)
        scores = torch.einsum("bhid,bhjd->bhij", qf.to(acc), k.to(acc)) * scale
        lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse[..., None])
        o = torch.einsum("bhij,bhjd->bhid", probs.to(v.dtype), v)
    return _unfold_groups(o, rows), _unfold_groups(lse, rows)


def attention_lse_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of :func:`attention_lse`'s output, given its saved o and lse.
    dk, dv sum over the query heads that share each key/value head."""
    rows, kv_heads = q.shape[2], k.shape[1]
    qf, dof, of, lsef = (_fold_groups(t, kv_heads) for t in (q, do, o, lse))
    if q.device.type == "cpu":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dof, qf, k, v, of, lsef, 0.0, False, scale=scale)
    else:
        acc = torch.promote_types(q.dtype, torch.float32)
        qa, ka, va, doa = (t.to(acc) for t in (qf, k, v, dof))
        probs = torch.exp(torch.einsum("bhid,bhjd->bhij", qa, ka) * scale - lsef[..., None])
        dv = torch.einsum("bhij,bhid->bhjd", probs, doa)
        dp = torch.einsum("bhid,bhjd->bhij", doa, va)
        delta = (doa * of.to(acc)).sum(-1, keepdim=True)
        ds = probs * (dp - delta) * scale
        dq = torch.einsum("bhij,bhjd->bhid", ds, ka)
        dk = torch.einsum("bhij,bhid->bhjd", ds, qa)
        dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return _unfold_groups(dq, rows), dk, dv
