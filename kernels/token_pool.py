"""Token reduction (TokenLearner pooling): Triton forward and backward kernels.

For each segment (one chunk of one sample) with tokens ``x[n]`` (d-dim) and logits
``S[n, j]`` (one column per output token ``j < m``):

    out[j] = sum_n softmax_n(S[n, j]) * x[n]

It is attention with the scores given: ``m`` queries whose scores over the ``N`` tokens
are the columns of ``S``, and the tokens as values. So the kernels follow
FlashAttention's: the forward runs one pass over the tokens with an online softmax and
saves only the log-sum-exp per output token (no normalized weight matrix is written); the
backward recomputes the weights from it.

* forward, one program per (feature block, segment): all m outputs of that feature block.
  It saves each column's max and log-sum (not their sum, the log-sum-exp): logits can be
  large (a TokenLearner's are not scaled), and ``exp(s - max - logsum)`` keeps the
  winning weight exact where ``exp(s - lse)`` would lose lse's last bits.
* backward, one program per (token block, segment): dX = P dOut for its tokens, and
  dS = P * (X dOutᵀ - delta) with delta[j] = dOut[j] · out[j]; every output is written
  by exactly one program (deterministic, no atomics). delta is formed with the same dot as
  X dOutᵀ, so where a weight is exactly one (out = that token) the difference cancels to
  exactly zero, as the exact gradient does, instead of to rounding noise.

Layouts: padded x (B, N, d), logits (B, N, m), optional lengths (B,); or packed x
(total, d), logits (total, m) with int32 cu_seqlens (B + 1,) — passed as their (1, total, ·)
views with batch stride 0. out is (B, m, d); stats (B, 2, m) holds each column's max and
log-sum, natural log.

NaN: a NaN logit makes its column's statistics and output NaN (the column's softmax
depends on it), a NaN in x the outputs' dim it sits in, and gradients likewise; padding
rows and columns are loaded as 0 and their products removed by ``where``, so a NaN past a
segment's end reaches nothing. Grid and offsets: ``_program``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import (KernelConfig, Launch, device_capability, dot_precision, empty, empty_like,
                      kernel_config)
from ._program import LOG2E, flat_grid, load_rows, segment, split_program, store_rows, wide


@triton.jit
def _token_pool_fwd_kernel(
    X, S, OUT, STATS, CU, LENS,
    stride_xb, stride_xn, stride_xd,
    stride_sb, stride_sn, stride_sj,
    stride_ob, stride_oj, stride_od,
    stride_tb, stride_tk, stride_tj,
    N, D, M,
    VARLEN: tl.constexpr, HAS_LENS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_d, b = split_program(tl.cdiv(D, BLOCK_D))
    start, length, _ = segment(CU, LENS, b, N, VARLEN, HAS_LENS)
    b = wide(b)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    j_mask = offs_j < M
    d_mask = offs_d < D
    X_seg = X + b * stride_xb + start * stride_xn
    S_seg = S + b * stride_sb + start * stride_sn

    m_i = tl.full([BLOCK_J], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_J], tl.float32)
    acc = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    for start_n in range(0, length, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < length
        # The logits block transposed, (BLOCK_J, BLOCK_N): output tokens are the rows.
        s = tl.load(S_seg + offs_n[None, :] * stride_sn + offs_j[:, None] * stride_sj,
                    mask=j_mask[:, None] & n_mask[None, :], other=float("-inf"))
        s = s.to(tl.float32)
        x = load_rows(X_seg, offs_n, offs_d, stride_xn, stride_xd,
                       n_mask[:, None] & d_mask[None, :])
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # padding rows of BLOCK_J
        # Subtract, then scale to base 2: the max's own weight stays exactly exp2(0) = 1.
        p = tl.exp2((s - m_safe[:, None]) * LOG2E)
        alpha = tl.exp2((m_i - m_safe) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(x.dtype), x, input_precision=DOT_PRECISION)
        m_i = m_new

    # An empty segment has no weights to normalize: its outputs are 0. A NaN sum (a NaN
    # logit: max drops it, its weight exp2(NaN) does not) stays NaN.
    seen = l_i != 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    store_rows(OUT + b * stride_ob, offs_j, offs_d, stride_oj, stride_od, out,
                j_mask[:, None] & d_mask[None, :])
    if pid_d == 0:  # every feature block computes the same statistics: one stores them
        STATS_b = STATS + b * stride_tb + offs_j * stride_tj
        tl.store(STATS_b, m_i, mask=j_mask)
        tl.store(STATS_b + stride_tk, tl.log2(l_safe) / LOG2E, mask=j_mask)


@triton.jit
def _token_pool_bwd_kernel(
    X, S, OUT, DOUT, STATS, DX, DS, CU, LENS,
    stride_xb, stride_xn, stride_xd,
    stride_sb, stride_sn, stride_sj,
    stride_ob, stride_oj, stride_od,
    stride_dob, stride_doj, stride_dod,
    stride_tb, stride_tk, stride_tj,
    stride_dxb, stride_dxn, stride_dxd,
    stride_dsb, stride_dsn, stride_dsj,
    N, D, M,
    VARLEN: tl.constexpr, HAS_LENS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    block, b = split_program(tl.cdiv(N, BLOCK_N))
    start_n = block * BLOCK_N
    start, length, extent = segment(CU, LENS, b, N, VARLEN, HAS_LENS)
    b = wide(b)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_J)
    n_mask = offs_n < length
    j_mask = offs_j < M
    nj_mask = n_mask[:, None] & j_mask[None, :]
    s = tl.load(S + b * stride_sb + start * stride_sn + offs_n[:, None] * stride_sn
                + offs_j[None, :] * stride_sj, mask=nj_mask, other=0.0).to(tl.float32)
    STATS_b = STATS + b * stride_tb + offs_j * stride_tj
    col_max = tl.load(STATS_b, mask=j_mask, other=0.0)
    log_sum = tl.load(STATS_b + stride_tk, mask=j_mask, other=0.0)
    # Padding rows and columns (and empty segments, which run no rows) get weight 0.
    p = tl.exp2((s - col_max[None, :]) * LOG2E - log_sum[None, :] * LOG2E)
    p = tl.where(nj_mask, p, 0.0)  # (BLOCK_N, BLOCK_J)

    X_seg = X + b * stride_xb + start * stride_xn
    DX_seg = DX + b * stride_dxb + start * stride_dxn
    owned = offs_n < extent
    dp = tl.zeros([BLOCK_N, BLOCK_J], tl.float32)
    out_dout = tl.zeros([BLOCK_J, BLOCK_J], tl.float32)
    for start_d in range(0, D, BLOCK_D):
        offs_d = start_d + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        jd_mask = j_mask[:, None] & d_mask[None, :]
        x = load_rows(X_seg, offs_n, offs_d, stride_xn, stride_xd,
                       n_mask[:, None] & d_mask[None, :])
        out = load_rows(OUT + b * stride_ob, offs_j, offs_d, stride_oj, stride_od, jd_mask)
        dout = load_rows(DOUT + b * stride_dob, offs_j, offs_d, stride_doj, stride_dod, jd_mask)
        dx = tl.dot(p.to(dout.dtype), dout, input_precision=DOT_PRECISION)
        store_rows(DX_seg, offs_n, offs_d, stride_dxn, stride_dxd, dx,
                    owned[:, None] & d_mask[None, :])
        dp += tl.dot(x, tl.trans(dout), input_precision=DOT_PRECISION)
        out_dout += tl.dot(out.to(x.dtype), tl.trans(dout), input_precision=DOT_PRECISION)
    delta = tl.sum(tl.where(offs_j[:, None] == offs_j[None, :], out_dout, 0.0), 0)
    # A padding row's p is 0, but delta is NaN where x holds one: no term, not 0 * NaN.
    ds = tl.where(nj_mask, p * (dp - delta[None, :]), 0.0)
    tl.store(DS + b * stride_dsb + start * stride_dsn + offs_n[:, None] * stride_dsn
             + offs_j[None, :] * stride_dsj, ds.to(DS.dtype.element_ty),
             mask=owned[:, None] & j_mask[None, :])


# --------------------------------------------------------------------------- launchers

def _strides(t: Tensor, varlen: bool) -> tuple[int, ...]:
    return (0 if varlen else t.stride(0), *t.stride()[1:])


def _as_batched(t: Tensor) -> Tensor:
    # Packed (total, ·) -> its (1, total, ·) view: the kernels' layout.
    return t.unsqueeze(0) if t.dim() == 2 else t


def _constexprs(cfg: KernelConfig, x: Tensor, m: int, cu, lengths) -> dict:
    return dict(VARLEN=cu is not None, HAS_LENS=lengths is not None, BLOCK_N=cfg.block_n,
                BLOCK_D=cfg.block_m, BLOCK_J=max(16, triton.next_power_of_2(m)),
                DOT_PRECISION=dot_precision(x.dtype))


def token_pool_fwd_launch(x, logits, out, stats, cu_seqlens, lengths, capability=None) -> Launch:
    """block_m of the config is the feature block, block_n the token block."""
    x3, s3 = _as_batched(x), _as_batched(logits)
    varlen = cu_seqlens is not None
    batch = out.shape[0]
    N, D, M = x3.shape[1], x3.shape[2], s3.shape[2]
    cfg = kernel_config("token_pool_fwd", M, x.dtype, capability or device_capability(x.device))
    args = (x3, s3, out, stats, *(x if t is None else t for t in (cu_seqlens, lengths)),
            *_strides(x3, varlen), *_strides(s3, varlen), *out.stride(), *stats.stride(),
            N, D, M)
    return Launch(_token_pool_fwd_kernel, flat_grid(triton.cdiv(D, cfg.block_m), batch), args,
                  _constexprs(cfg, x, M, cu_seqlens, lengths), cfg)


def token_pool_bwd_launch(x, logits, out, dout, stats, dx, dlogits, cu_seqlens, lengths,
                          max_seqlen: int, capability=None) -> Launch:
    """``max_seqlen``: the longest segment (padded: N), the kernel's N (its grid's token
    blocks)."""
    x3, s3, dx3, ds3 = (_as_batched(t) for t in (x, logits, dx, dlogits))
    varlen = cu_seqlens is not None
    batch = dout.shape[0]
    N, D, M = max_seqlen if varlen else x3.shape[1], x3.shape[2], s3.shape[2]
    cfg = kernel_config("token_pool_bwd", M, x.dtype, capability or device_capability(x.device))
    args = (x3, s3, out, dout, stats, dx3, ds3,
            *(x if t is None else t for t in (cu_seqlens, lengths)),
            *_strides(x3, varlen), *_strides(s3, varlen), *out.stride(), *dout.stride(),
            *stats.stride(), *_strides(dx3, varlen), *_strides(ds3, varlen), N, D, M)
    return Launch(_token_pool_bwd_kernel, flat_grid(triton.cdiv(N, cfg.block_n), batch),
                  args, _constexprs(cfg, x, M, cu_seqlens, lengths), cfg)


def token_pool_fwd(x: Tensor, logits: Tensor, batch: int, cu_seqlens=None, lengths=None):
    """Returns ``(out, stats)``: out (B, m, d) in x's dtype; stats (B, 2, m) fp32, each
    column's max and log-sum (natural log; an empty segment has max -inf and out 0)."""
    m, d = logits.shape[-1], x.shape[-1]
    out = empty((batch, m, d), dtype=x.dtype, device=x.device)
    stats = empty((batch, 2, m), dtype=torch.float32, device=x.device)
    token_pool_fwd_launch(x, logits, out, stats, cu_seqlens, lengths).run()
    return out, stats


def token_pool_bwd(dout: Tensor, x: Tensor, logits: Tensor, out: Tensor, stats: Tensor,
                   max_seqlen: int, cu_seqlens=None, lengths=None):
    """Returns ``(dx, dlogits)`` laid out like ``x`` and ``logits``."""
    dx, dlogits = empty_like(x), empty_like(logits)
    token_pool_bwd_launch(x, logits, out, dout, stats, dx, dlogits, cu_seqlens, lengths,
                          max_seqlen).run()
    return dx, dlogits
