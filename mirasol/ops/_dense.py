"""Unmasked attention with its log-sum-exp, forward and backward: the building block of the
``torch`` backends, which split a masked problem into unmasked pieces (a chunk's queries
against its visible prefix, one segment against its keys) and run each here.

On CPU this calls PyTorch's fused flash-attention kernel for CPU, which returns the
log-sum-exp and has a backward that consumes it (no piece-sized score matrix in memory).
Elsewhere (and for fp32 gradients at head dims >= 256, below) a math version
materializes one piece's scores at a time.

NaN: the CPU kernel drops a NaN query (its row comes out 0), so pieces whose inputs (or,
in backward, output gradient) hold a NaN run the math version, which propagates a NaN to
exactly the outputs and gradients whose formula has a term with it: a pair the mask hides has no term (``where``, never a
product with 0, and NaN cleared from the dot operand that also serves hidden pairs). The
check (:func:`has_nan`) costs one summing pass over the inputs; the torch backends run it
once per problem and per piece only where the problem holds a NaN.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor


def _fold_groups(x: Tensor, kv_heads: int) -> Tensor:
    # The query heads that share a key/value head attend to the same keys, so they can
    # be stacked as extra rows: (B, H, M, ...) -> (B, H_kv, G*M, ...). No K/V copy. (Whole
    # heads pass as they are: a rearrange costs microseconds a call, and small pieces add up.)
    if x.shape[1] == kv_heads:
        return x
    return rearrange(x, "b (h g) m ... -> b h (g m) ...", h=kv_heads)


def _unfold_groups(x: Tensor, rows: int) -> Tensor:
    if x.shape[2] == rows:
        return x
    return rearrange(x, "b h (g m) ... -> b (h g) m ...", m=rows)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # The CPU kernel takes a mask of the query's dtype, added to the scores.
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)


def _flash_cpu_fwd(q, k, v, scale, mask, causal):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=_additive(mask, q.dtype), scale=scale)


def _flash_cpu_bwd(do, q, k, v, o, lse, scale, mask, causal):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        do, q, k, v, o, lse, 0.0, causal, attn_mask=_additive(mask, q.dtype), scale=scale)


def _with_causal(mask: Tensor | None, causal: bool, q: Tensor, k: Tensor) -> Tensor | None:
    # The math version takes token causality as a mask (top-left: row i sees keys <= i).
    if not causal:
        return mask
    return torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()


def _hidden(x: Tensor, mask: Tensor | None) -> Tensor:
    # x's entries for pairs the mask hides are no terms: 0, whatever x holds there.
    return x if mask is None else x.masked_fill(~mask, 0.0)


def _clean(x: Tensor, mask: Tensor | None) -> Tensor:
    # A dot operand that also meets hidden pairs: its NaN would reach them as 0 * NaN. The
    # pairs that do see it get the NaN from the other factor.
    return x if mask is None else x.masked_fill(x.isnan(), 0.0)


def _scores(q, k, scale, mask):
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


def _accumulated(acc: torch.dtype, *tensors: Tensor) -> list[Tensor]:
    # In the accumulation dtype and contiguous: the matmuls' summation order then does not
    # depend on the caller's strides (a strided operand can take another BLAS path).
    return [t.to(acc).contiguous() for t in tensors]


def _math_fwd(q, k, v, scale, mask, causal):
    mask = _with_causal(mask, causal, q, k)
    acc = torch.promote_types(q.dtype, torch.float32)
    q, k, v = _accumulated(acc, q, k, v)
    scores = _scores(q, k, scale, mask)
    lse = torch.logsumexp(scores, dim=-1)
    probs = _hidden(torch.exp(scores - lse[..., None]), mask)
    o = torch.einsum("bhij,bhjd->bhid", probs, _clean(v, mask))
    if mask is not None:  # a NaN value reaches the rows that see its key, in its dim
        seen_nan = torch.einsum("ij,bhjd->bhid", mask.to(acc), v.isnan().to(acc)) > 0
        o = o.masked_fill(seen_nan, math.nan)
    return o.to(q.dtype), lse


def _math_bwd(do, q, k, v, o, lse, scale, mask, causal):
    mask = _with_causal(mask, causal, q, k)
    acc = torch.promote_types(q.dtype, torch.float32)
    q, k, v, do, o = _accumulated(acc, q, k, v, do, o)
    probs = _hidden(torch.exp(_scores(q, k, scale, mask) - lse[..., None]), mask)
    dv = torch.einsum("bhij,bhid->bhjd", probs, _clean(do, mask))
    if mask is not None:  # a NaN output gradient reaches the values of the keys its row sees
        seen_nan = torch.einsum("ij,bhid->bhjd", mask.to(acc), do.isnan().to(acc)) > 0
        dv = dv.masked_fill(seen_nan, math.nan)
    dp = torch.einsum("bhid,bhjd->bhij", do, v)
    ds = _hidden(probs * (dp - (do * o).sum(-1, keepdim=True)), mask) * scale
    dq = torch.einsum("bhij,bhjd->bhid", ds, _clean(k, mask))
    dk = torch.einsum("bhij,bhid->bhjd", ds, _clean(q, mask))
    return dq, dk, dv


def _fold_mask(mask: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    # Rows are (group, query) after folding: the mask repeats once per group.
    groups = q.shape[1] // k.shape[1]
    return mask if mask is None or groups == 1 else mask.repeat(groups, 1)


_FUSED = {"cpu": (_flash_cpu_fwd, _flash_cpu_bwd)}
_MATH = (_math_fwd, _math_bwd)


# PyTorch's fused CPU backward misses the parity rule in fp32 from this head dim on, on some
# CPUs: dv at 1.21x the allowance with 4 query heads on 2 kv heads at head dim 264, on an
# earlier session's machine (within it, at <= 0.34x, on an AMD EPYC with AVX-512). The math
# version is the reference's arithmetic piece by piece, so those gradients run there.
FUSED_FP32_BWD_MAX_HEAD_DIM = 255


def compute_dtypes(q: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(the dtype the torch backends' fused calls take, their accumulation dtype). bf16 runs
    natively on CPU, where the fused kernel multiplies in bf16 (AMX where the CPU has it)
    and accumulates in fp32; fp16 (no fast CPU path) and every other device's math version
    run in fp32."""
    acc = torch.promote_types(q.dtype, torch.float32)
    native = q.dtype == torch.bfloat16 and q.device.type == "cpu"
    return (q.dtype if native else acc), acc


def has_nan(*tensors: Tensor) -> bool:
    """Whether any of ``tensors`` holds a NaN: one summing pass each (a NaN makes its sum
    NaN, and only a NaN or opposite infinities can), the exact ``isnan`` scan only where a
    sum is NaN. One host read."""
    if not torch.stack([t.sum() for t in tensors]).isnan().any():
        return False
    return bool(torch.stack([t.isnan().any() for t in tensors]).any())


def _kernels(*inputs: Tensor, backward: bool = False, may_hold_nan: bool = True):
    """The (forward, backward) pair for these inputs (q, k, v, and the output gradient in
    backward). ``may_hold_nan`` False: the caller has checked that none of them does."""
    q = inputs[0]
    if may_hold_nan and has_nan(*inputs):
        return _MATH
    if backward and q.dtype == torch.float32 and q.shape[-1] > FUSED_FP32_BWD_MAX_HEAD_DIM:
        return _MATH
    return _FUSED.get(q.device.type, _MATH)


def _check_causal(causal: bool, q: Tensor, k: Tensor) -> None:
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"a token-causal piece needs as many key/value heads as query heads "
                         f"(got {q.shape[1]} and {k.shape[1]})")


def attention_lse(q: Tensor, k: Tensor, v: Tensor, scale: float,
                  mask: Tensor | None = None, *, causal: bool = False,
                  may_hold_nan: bool = True) -> tuple[Tensor, Tensor]:
    """o = softmax(q kᵀ · scale) v and lse = logsumexp(q kᵀ · scale) over the keys.

    q: (B, H, M, D); k, v: (B, H_kv, N, D), N >= 1. mask: optional bool (M, N), True = may
    attend, with at least one True per row (a piece-sized mask, e.g. a causal diagonal).
    causal: token-causal instead, top-left (row i sees keys <= i; the fused kernel skips
    the blocks past the diagonal); M <= N and H == H_kv (grouped rows are not positions).
    may_hold_nan: False where the caller has checked (:func:`has_nan`) that no input does,
    for pieces of one checked problem.
    Returns o (B, H, M, D) in q's dtype and lse (B, H, M) in fp32 (fp64 for fp64 inputs).
    """
    _check_causal(causal, q, k)
    fwd, _ = _kernels(q, k, v, may_hold_nan=may_hold_nan)
    o, lse = fwd(_fold_groups(q, k.shape[1]), k, v, scale, _fold_mask(mask, q, k), causal)
    rows = q.shape[2]
    return _unfold_groups(o, rows), _unfold_groups(lse, rows)


def attention_lse_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                           lse: Tensor, scale: float, mask: Tensor | None = None, *,
                           causal: bool = False,
                           may_hold_nan: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of :func:`attention_lse`'s output, given its saved o and lse;
    dk, dv sum over the query heads that share each key/value head. In q's dtype on CPU,
    in the accumulation dtype (fp32, fp64 for fp64) elsewhere."""
    _check_causal(causal, q, k)
    _, bwd = _kernels(q, k, v, do, backward=True, may_hold_nan=may_hold_nan)
    kv_heads = k.shape[1]
    dq, dk, dv = bwd(*(_fold_groups(t, kv_heads) for t in (do, q)), k, v,
                     *(_fold_groups(t, kv_heads) for t in (o, lse)), scale,
                     _fold_mask(mask, q, k), causal)
    return _unfold_groups(dq, q.shape[2]), dk, dv
