"""Chunked causal attention: Triton forward and backward kernels and their launchers.

Token ``i`` attends to token ``j`` iff ``j // chunk <= i // chunk`` and ``j < length``.
Positions are laid out as in SDPA: ``q`` is (B, H, N, D), ``k``/``v`` are (B, H_kv, N, D)
with ``H % H_kv == 0`` (grouped-query attention). ``lengths`` (B,) optionally shortens
each sample; rows at or past a sample's length produce zeros and get zero gradients.

Structure (FlashAttention-2, with the loop bounds of the chunked mask):

* forward, one program per (query block, batch*head): key blocks left of the query
  block's first chunk end are fully visible and run unmasked; blocks up to the last
  visible chunk end of the block's last row run with the mask; nothing further right
  is loaded. Saves the natural-log log-sum-exp for the backward.
* backward, dK/dV: one program per (key block, batch*kv-head) walks the query blocks
  that can see it (masked near the diagonal, unmasked below), summing over the query
  heads of its group, so dK/dV need no atomics and are deterministic.
* backward, dQ: one program per (query block, batch*head) over the forward's key range.

The launchers take and return torch tensors, validated by the caller (mirasol.ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (KernelConfig, Launch, device_capability, dot_precision, empty, head_block,
                      kernel_config)

# The kernels work in base 2: exp(x) = exp2(x * LOG2E).
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _sample_length(LENGTHS, b, N, HAS_LENGTHS: tl.constexpr):
    if HAS_LENGTHS:
        return tl.load(LENGTHS + b).to(tl.int32)
    return N


@triton.jit
def _query_program(LENGTHS, H, N, GROUP, HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr):
    """(sample, head, kv head, sample length, first row) of this query-block program.
    Later query blocks see more keys: they are launched first to shorten the tail."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    return b, h, h // GROUP, _sample_length(LENGTHS, b, N, HAS_LENGTHS), pid_m * BLOCK_M


@triton.jit
def _visible_key_range(start_m, L, CHUNK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key ranges of a query block [start_m, start_m + BLOCK_M) of a sample of length L.

    Returns (unmasked_end, masked_end): keys [0, unmasked_end) are visible to every row
    of the block and are a whole number of BLOCK_N blocks; keys [unmasked_end, masked_end)
    need the mask; keys >= masked_end are visible to no row.
    """
    first_chunk_end = tl.minimum((start_m // CHUNK + 1) * CHUNK, L)
    last_row = tl.minimum(start_m + BLOCK_M, L) - 1
    masked_end = tl.minimum((last_row // CHUNK + 1) * CHUNK, L)
    # An empty block (start_m >= L) visits nothing.
    masked_end = tl.where(start_m < L, masked_end, 0)
    unmasked_end = tl.where(start_m < L, (first_chunk_end // BLOCK_N) * BLOCK_N, 0)
    return unmasked_end, masked_end


@triton.jit
def _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n, offs_d,
             d_mask, hi, MASKED: tl.constexpr):
    """The K and V rows offs_n of one head (zero-padded to the tile's head dim). Unmasked
    blocks lie wholly inside the visible range: only the last, masked one can cross hi."""
    mask = d_mask[None, :]
    if MASKED:
        mask = mask & (offs_n[:, None] < hi)
    k = tl.load(K_head + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=mask, other=0.0)
    v = tl.load(V_head + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=mask, other=0.0)
    return k, v


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, d_mask, kv_limit, qk_scale, lo, hi,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n,
                        offs_d, d_mask, hi, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            qk = tl.where(offs_n[None, :] < kv_limit[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _chunked_attn_fwd_kernel(
    Q, K, V, O, LSE, LENGTHS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh,
    H, N, HEAD_DIM, CHUNK, GROUP, qk_scale,
    HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    b, h, h_kv, L, start_m = _query_program(LENGTHS, H, N, GROUP, HAS_LENGTHS, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_valid = offs_m < L

    q = tl.load(Q + b * stride_qb + h * stride_qh
                + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_valid[:, None] & d_mask[None, :], other=0.0)
    K_head = K + b * stride_kb + h_kv * stride_kh
    V_head = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    kv_limit = tl.minimum((offs_m // CHUNK + 1) * CHUNK, L)
    unmasked_end, masked_end = _visible_key_range(start_m, L, CHUNK, BLOCK_M, BLOCK_N)

    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                               stride_vn, stride_vd, offs_m, offs_d, d_mask, kv_limit,
                               qk_scale, 0, unmasked_end, False, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                               stride_vn, stride_vd, offs_m, offs_d, d_mask, kv_limit,
                               qk_scale, unmasked_end, masked_end, True, BLOCK_N,
                               DOT_PRECISION)

    # Rows past the sample's length see no keys: their output is 0 and their
    # log-sum-exp is log(0) = -inf.
    l_safe = tl.where(row_valid, l_i, 1.0)
    out = tl.where(row_valid[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(row_valid, (m_i + tl.log2(l_safe)) / LOG2E, float("-inf"))
    out_mask = offs_m < N
    tl.store(O + b * stride_ob + h * stride_oh
             + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=out_mask[:, None] & d_mask[None, :])
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, lse, mask=out_mask)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_deltab, stride_deltah,
    H, N, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[b, h, i] = sum_d O[b, h, i, d] * dO[b, h, i, d], in fp32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on
                + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * stride_deltab + h * stride_deltah + offs_m, delta, mask=offs_m < N)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head,
    stride_qn, stride_qd, stride_don, stride_dod,
    offs_n, offs_d, d_mask, L, CHUNK, qk_scale, lo, hi,
    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_valid = offs_m < L
        q = tl.load(Q_head + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                    mask=row_valid[:, None] & d_mask[None, :], other=0.0)
        do = tl.load(DO_head + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                     mask=row_valid[:, None] & d_mask[None, :], other=0.0)
        # An invalid row gets lse = +inf, hence probability 0: no mask needed for it.
        lse = tl.load(LSE_head + offs_m, mask=row_valid, other=float("inf")) * LOG2E
        delta = tl.load(DELTA_head + offs_m, mask=row_valid, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        pT = tl.exp2(qkT * qk_scale - lse[None, :])
        if MASKED:
            kv_limit = tl.minimum((offs_m // CHUNK + 1) * CHUNK, L)
            pT = tl.where(offs_n[:, None] < kv_limit[None, :], pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _chunked_attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, LENGTHS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H_KV, N, HEAD_DIM, CHUNK, GROUP, scale, qk_scale,
    HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program 0 holds the first key block, which every query sees: the longest programs
    # start first.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    h_kv = pid_bh % H_KV
    L = _sample_length(LENGTHS, b, N, HAS_LENGTHS)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    kv_mask = (offs_n[:, None] < L) & d_mask[None, :]
    k = tl.load(K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)

    # Queries that see some key of this block start at its first chunk's start; those
    # that see all of it start at its last key's chunk start (only if every key of the
    # block is inside the sample; otherwise the length mask is needed throughout).
    q_end = tl.where(start_n < L, L, 0)
    q_lo = ((start_n // CHUNK) * CHUNK // BLOCK_M) * BLOCK_M
    full_row = ((start_n + BLOCK_N - 1) // CHUNK) * CHUNK
    q_full = tl.where(start_n + BLOCK_N <= L, tl.cdiv(full_row, BLOCK_M) * BLOCK_M, q_end)
    q_full = tl.minimum(q_full, q_end)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):
        h = h_kv * GROUP + g
        Q_head = Q + b * stride_qb + h * stride_qh
        DO_head = DO + b * stride_dob + h * stride_doh
        LSE_head = LSE + b * stride_lb + h * stride_lh
        DELTA_head = DELTA + b * stride_lb + h * stride_lh
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head,
                                 stride_qn, stride_qd, stride_don, stride_dod,
                                 offs_n, offs_d, d_mask, L, CHUNK, qk_scale, q_lo, q_full,
                                 True, BLOCK_M, DOT_PRECISION)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head,
                                 stride_qn, stride_qd, stride_don, stride_dod,
                                 offs_n, offs_d, d_mask, L, CHUNK, qk_scale, q_full, q_end,
                                 False, BLOCK_M, DOT_PRECISION)

    out_mask = (offs_n[:, None] < N) & d_mask[None, :]
    tl.store(DK + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :] * stride_dkd, (dk * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_d, d_mask, kv_limit, qk_scale, lo, hi,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n,
                        offs_d, d_mask, hi, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(offs_n[None, :] < kv_limit[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _chunked_attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, LENGTHS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N, HEAD_DIM, CHUNK, GROUP, scale, qk_scale,
    HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    b, h, h_kv, L, start_m = _query_program(LENGTHS, H, N, GROUP, HAS_LENGTHS, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_valid = offs_m < L
    qd_mask = row_valid[:, None] & d_mask[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=qd_mask, other=0.0)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m, mask=row_valid,
                  other=float("inf")) * LOG2E
    delta = tl.load(DELTA + b * stride_lb + h * stride_lh + offs_m, mask=row_valid, other=0.0)
    K_head = K + b * stride_kb + h_kv * stride_kh
    V_head = V + b * stride_vb + h_kv * stride_vh

    kv_limit = tl.minimum((offs_m // CHUNK + 1) * CHUNK, L)
    unmasked_end, masked_end = _visible_key_range(start_m, L, CHUNK, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                       stride_vn, stride_vd, offs_d, d_mask, kv_limit, qk_scale,
                       0, unmasked_end, False, BLOCK_N, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                       stride_vn, stride_vd, offs_d, d_mask, kv_limit, qk_scale,
                       unmasked_end, masked_end, True, BLOCK_N, DOT_PRECISION)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn
             + offs_d[None, :] * stride_dqd, (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < N) & d_mask[None, :])


# --------------------------------------------------------------------------- launchers


def _lengths_arg(lengths: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    # A dummy pointer when there are no lengths: HAS_LENGTHS=False never reads it.
    return q if lengths is None else lengths


def _config(name: str, q: torch.Tensor, capability) -> KernelConfig:
    return kernel_config(name, q.shape[-1], q.dtype, capability or device_capability(q.device))


def _grid(blocks: int, batch_heads: int) -> tuple[int, int]:
    if batch_heads > 65535:  # CUDA's limit on the second grid dimension
        raise ValueError(f"batch * heads = {batch_heads} exceeds 65535, the most the kernels "
                         "launch; split the batch")
    return blocks, batch_heads


def _constexprs(cfg: KernelConfig, q: torch.Tensor, lengths) -> dict:
    return dict(HAS_LENGTHS=lengths is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                BLOCK_D=head_block(q.shape[-1]), DOT_PRECISION=dot_precision(q.dtype))


def chunked_attn_fwd_launch(q, k, v, o, lse, lengths, chunk_size: int, scale: float,
                            capability=None) -> Launch:
    """The forward kernel's grid, arguments and config for these (possibly meta) tensors;
    ``capability`` (default: q's device) picks the config."""
    B, H, N, D = q.shape
    cfg = _config("chunked_attn_fwd", q, capability)
    args = (q, k, v, o, lse, _lengths_arg(lengths, q),
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *lse.stride()[:2],
            H, N, D, chunk_size, H // k.shape[1], scale * LOG2E.value)
    return Launch(_chunked_attn_fwd_kernel, _grid(triton.cdiv(N, cfg.block_m), B * H), args,
                  _constexprs(cfg, q, lengths), cfg)


def chunked_attn_fwd(q, k, v, chunk_size: int, scale: float, lengths=None):
    """Forward: returns ``(o, lse)``; ``o`` like ``q`` (contiguous), ``lse`` (B, H, N) fp32,
    natural log, ``-inf`` for rows past a sample's length."""
    B, H, N, _ = q.shape
    o = empty(q.shape, dtype=q.dtype, device=q.device)
    lse = empty((B, H, N), dtype=torch.float32, device=q.device)
    chunked_attn_fwd_launch(q, k, v, o, lse, lengths, chunk_size, scale).run()
    return o, lse


def attn_bwd_delta_launch(o, do, delta, capability=None) -> Launch:
    B, H, N, D = o.shape
    cfg = _config("attn_bwd_delta", o, capability)
    args = (o, do, delta, *o.stride(), *do.stride(), *delta.stride()[:2], H, N, D)
    return Launch(_attn_bwd_delta_kernel, _grid(triton.cdiv(N, cfg.block_m), B * H), args,
                  dict(BLOCK_M=cfg.block_m, BLOCK_D=head_block(D)), cfg)


def chunked_attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, lengths, chunk_size: int,
                                 scale: float, capability=None) -> Launch:
    B, H, N, D = q.shape
    H_kv = k.shape[1]
    cfg = _config("chunked_attn_bwd_dkdv", q, capability)
    args = (q, k, v, do, lse, delta, dk, dv, _lengths_arg(lengths, q),
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *lse.stride()[:2],
            *dk.stride(), *dv.stride(),
            H_kv, N, D, chunk_size, H // H_kv, scale, scale * LOG2E.value)
    return Launch(_chunked_attn_bwd_dkdv_kernel, _grid(triton.cdiv(N, cfg.block_n), B * H_kv),
                  args, _constexprs(cfg, q, lengths), cfg)


def chunked_attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, lengths, chunk_size: int,
                               scale: float, capability=None) -> Launch:
    B, H, N, D = q.shape
    cfg = _config("chunked_attn_bwd_dq", q, capability)
    args = (q, k, v, do, lse, delta, dq, _lengths_arg(lengths, q),
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *lse.stride()[:2],
            *dq.stride(),
            H, N, D, chunk_size, H // k.shape[1], scale, scale * LOG2E.value)
    return Launch(_chunked_attn_bwd_dq_kernel, _grid(triton.cdiv(N, cfg.block_m), B * H), args,
                  _constexprs(cfg, q, lengths), cfg)


def chunked_attn_bwd(do, q, k, v, o, lse, chunk_size: int, scale: float, lengths=None):
    """Backward: returns ``(dq, dk, dv)`` shaped like ``q, k, v`` (contiguous)."""
    delta = empty(lse.shape, dtype=torch.float32, device=q.device)
    dq = empty(q.shape, dtype=q.dtype, device=q.device)
    dk = empty(k.shape, dtype=k.dtype, device=k.device)
    dv = empty(v.shape, dtype=v.dtype, device=v.device)
    attn_bwd_delta_launch(o, do, delta).run()
    chunked_attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, lengths,
                                 chunk_size, scale).run()
    chunked_attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, lengths, chunk_size, scale).run()
    return dq, dk, dv


__all__ = [
    "chunked_attn_fwd", "chunked_attn_bwd",
    "chunked_attn_fwd_launch", "attn_bwd_delta_launch",
    "chunked_attn_bwd_dkdv_launch", "chunked_attn_bwd_dq_launch",
]
