"""Segmented prefix attention: the Triton kernels behind chunked causal attention and
cross-attention, forward and backward.

The problem: a batch of segments (samples of a padded batch, or segments of a packed
sequence given by ``cu_seqlens``); segment ``b`` has ``q_len`` query rows and ``k_len`` key
rows, and query row ``i`` (counted within its segment) sees the keys ``j < limit(i)``:

    limit(i) = min((c(i + shift) + 1) * CHUNK, k_len),        c(x) = x // CHUNK

a prefix of its segment's keys that ends at a chunk boundary; with a window of
``WINDOW`` chunks (``HAS_WINDOW``) only the keys from ``start(i) = max((c(i + shift) -
WINDOW + 1) * CHUNK, 0)`` on, and the first ``SINKS`` keys, of that prefix. Every op here
is a choice of ``CHUNK``, ``shift``, window and sinks:

* chunked causal attention (the block-causal family, ``mirasol.masks``): ``CHUNK =
  chunk_size``, ``shift = k_len - q_len`` (queries are the last positions), the window and
  sinks as given; teacher forcing is three such launches merged by their log-sum-exp
  (:func:`chunked_attn_fwd`);
* cross-attention: ``CHUNK = NO_CHUNKS`` (every row sees all ``k_len`` keys);
* bottom-right causal attention: ``CHUNK = 1``, ``shift = k_len - q_len``.

``shift`` is never negative with a chunk above 1 (Triton's integer division truncates).

Structure (FlashAttention-2, with loop bounds from ``limit``):

* forward, one program per (query block, segment*head): key blocks below the block's
  first row's limit run unmasked; blocks up to its last row's limit run masked; no key
  block past that, and none of another segment, is ever loaded. With a window, the same
  from the block's first row's window start (masked up to its last row's), and the sinks
  below it: no key block between the sinks and the window is loaded. Saves the
  log-sum-exp.
* backward dK/dV, one program per (key block, segment*kv-head): walks the query blocks
  that see it (masked near the boundaries, unmasked between), summing over the query
  heads of its group: no atomics, deterministic.
* backward dQ, one program per (query block, segment*head), over the forward's key range.

Tensors are 4-D ``(batch, heads, rows, head_dim)`` views read through their strides. A
packed ``(total, heads, head_dim)`` tensor is passed as its ``(1, heads, total, head_dim)``
view, with the batch stride set to 0 so every segment addresses batch 0 at its offset.
Rows past ``q_len`` (keys past ``k_len``) of a padded sample are written as zeros; a packed
segment's program writes its own rows only.

NaN: a NaN in q, k, v or dO reaches exactly the outputs (and gradients) whose exact
formula has a term with it. In a masked block the probability of a key a row does not see
is 0, and ``0 * NaN`` in a dot carries another row's or key's NaN into that row: so the
kernels as tuned propagate every NaN, but in a masked block possibly to more outputs than
depend on it. Keeping it exact inside the hot loop would cost a select on a dot operand per
masked block, which takes the operand through registers and spills the tuned tiles. Instead
each kernel has a second specialization, ``EXACT_NAN``: a repair pass launched right after
it on a small tile, whose program reads back the rows it owns and returns unless they hold
a NaN (one load and one reduction per program when there is none: no host sync, no extra
work; under the interpreter the host checks instead, see ``_repair_may_write``). A program
that finds one recomputes its rows with the masked blocks exact: the NaN-bearing dot
operand cleared of NaN and the NaN set directly where a row sees it (which pairs those
are is one more dot, of the block's visibility with the operand's NaN pattern). A
program whose rows hold no NaN writes nothing, so with no NaN anywhere the result is the
fast kernel's, bitwise. (An inf in v or dO is not cleared: a row not seeing it may still
get ``0 * inf``.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import (KernelConfig, Launch, device_capability, dot_precision, empty, empty_like,
                      head_block, kernel_config)
from ._program import (LOG2E, flat_grid, load_rows, segment, split_program, store_rows, wide,
                       zero_nan)

# A chunk size larger than any segment: every row sees all of its segment's keys.
NO_CHUNKS = 1 << 30


@triton.jit
def _query_program(CU_Q, CU_K, Q_LENS, K_LENS, H, LQ, LK, GROUP, SPLITS,
                   VARLEN: tl.constexpr, HAS_Q_LENS: tl.constexpr, HAS_K_LENS: tl.constexpr,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """A query-block program's first row, segment, head, kv head, the segment's query and
    key bounds, its shift, and which of the ``SPLITS`` key splits it computes (the
    split-KV forward; 0 of 1 otherwise). Later query blocks see more keys: they launch
    first, which shortens the tail."""
    blocks = tl.cdiv(LQ, BLOCK_M)
    index, bh = split_program(blocks * SPLITS)
    block = index // SPLITS
    split = index - block * SPLITS
    start_m = (blocks - 1 - block) * BLOCK_M
    b = bh // H
    h = bh % H
    q_start, q_len, q_extent = segment(CU_Q, Q_LENS, b, LQ, VARLEN, HAS_Q_LENS)
    k_start, k_len, _ = segment(CU_K, K_LENS, b, LK, VARLEN, HAS_K_LENS)
    shift = k_len - q_len if CAUSAL else 0
    return start_m, b, h, h // GROUP, q_start, q_len, q_extent, k_start, k_len, shift, split


@triton.jit
def _key_limit(rows, shift, CHUNK, k_len):
    """Exclusive end of the keys each row sees. (rows + shift) is negative only with
    CHUNK = 1, where truncating and flooring division agree."""
    return tl.minimum(((rows + shift) // CHUNK + 1) * CHUNK, k_len)


@triton.jit
def _window_start(rows, shift, CHUNK, WINDOW):
    """First key of each row's window (the keys below it it sees only if they are sinks)."""
    return tl.maximum(((rows + shift) // CHUNK - WINDOW + 1) * CHUNK, 0)


@triton.jit
def _sees(keys, limit, start, SINKS, HAS_WINDOW: tl.constexpr):
    """Whether a row with this limit (and window start) sees these keys; broadcasts."""
    seen = keys < limit
    if HAS_WINDOW:
        seen = seen & ((keys >= start) | (keys < SINKS))
    return seen


@triton.jit
def _nan_hits(seen, x):
    """For each (row, dim) of seen @ x: whether a pair it sees meets a NaN of x (a count,
    exact: a dot of 0s and 1s)."""
    return tl.dot(seen.to(tl.float16), (x != x).to(tl.float16)) > 0


@triton.jit
def _first_row_seeing(key, shift, CHUNK):
    """The first row whose limit passes ``key`` (the inverse of _key_limit), at least 0."""
    return tl.maximum((key // CHUNK) * CHUNK - shift, 0)


@triton.jit
def _key_range(start_m, q_len, shift, CHUNK, k_len, WINDOW, SINKS, HAS_WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key ranges the query block at start_m visits, in key order:

        [0, s0) unmasked, [s0, s1) masked          the sinks below the window (HAS_WINDOW)
        [w0, m1) masked                            the window's ragged start (HAS_WINDOW)
        [m1, u1) unmasked, [u1, end) masked        up to the causal limit

    Every row of the block sees every key of an unmasked range (whole BLOCK_N blocks); no
    row sees a key outside the ranges, which are disjoint. Without a window s0 = s1 = w0 =
    m1 = 0 (the prefix: unmasked below the first row's limit, masked up to the last row's).
    An empty block (start_m >= q_len) visits nothing."""
    has_rows = start_m < q_len
    last_row = tl.minimum(start_m + BLOCK_M, q_len) - 1
    first = tl.maximum(_key_limit(start_m, shift, CHUNK, k_len), 0)
    end = tl.where(has_rows, tl.maximum(_key_limit(last_row, shift, CHUNK, k_len), 0), 0)
    u1 = tl.where(has_rows, (first // BLOCK_N) * BLOCK_N, 0)
    s0 = 0
    s1 = 0
    w0 = 0
    m1 = 0
    if HAS_WINDOW:
        w0 = (_window_start(start_m, shift, CHUNK, WINDOW) // BLOCK_N) * BLOCK_N
        # Full blocks from the last row's window start; a block straddling it is masked.
        m1 = tl.maximum(w0, tl.minimum(tl.cdiv(_window_start(last_row, shift, CHUNK, WINDOW),
                                               BLOCK_N) * BLOCK_N, u1))
        u1 = tl.maximum(m1, u1)
        # Sinks below the window (w0 on is the window's), unmasked under the first row's
        # limit; the last row's limit bounds them (s1 need not end a block: loads stop
        # there).
        s1 = tl.minimum(tl.minimum(SINKS, end), w0)
        s0 = tl.minimum((tl.minimum(SINKS, first) // BLOCK_N) * BLOCK_N, s1)
    return s0, s1, w0, m1, u1, end


@triton.jit
def _load_lse(LSE_head, rows, stride_n, valid):
    """Log-sum-exp in base 2. A row outside the segment, or one that saw no key (lse =
    -inf), gets +inf: its probabilities exp2(s - inf) are 0, so it needs no other mask."""
    lse = tl.load(LSE_head + rows * stride_n, mask=valid, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E


@triton.jit
def _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n, offs_d,
             d_mask, hi, MASKED: tl.constexpr):
    """K and V rows offs_n of one head, zero-padded to the tile's head dim. Unmasked blocks
    lie wholly inside every row's visible range; only a masked block can reach past hi (a
    range's end, never past the segment's keys)."""
    mask = d_mask[None, :]
    if MASKED:
        mask = mask & (offs_n[:, None] < hi)
    return (load_rows(K_head, offs_n, offs_d, stride_kn, stride_kd, mask),
            load_rows(V_head, offs_n, offs_d, stride_vn, stride_vd, mask))


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
               offs_d, d_mask, kv_limit, kv_start, SINKS, qk_scale, lo, hi,
               MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, EXACT_NAN: tl.constexpr,
               BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n,
                        offs_d, d_mask, hi, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            seen = _sees(offs_n[None, :], kv_limit[:, None], kv_start[:, None], SINKS,
                         HAS_WINDOW)
            qk = tl.where(seen, qk, float("-inf"))
        # max drops a NaN score; its probability exp2(NaN - m) is NaN all the same, so the
        # row's sum and accumulator carry it.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with no visible key so far keeps m = -inf: shift by 0 instead, so its
        # probabilities are exp2(-inf) = 0 rather than exp2(-inf + inf) = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED and EXACT_NAN:
            # A NaN value reaches the rows that see its key, in its own dim.
            acc = tl.where(_nan_hits(seen, v), float("nan"), acc)
            v = zero_nan(v)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _split_range(lo, hi, k_lo, k_hi, SPLIT_KV: tl.constexpr):
    """The key range [lo, hi) within a split's keys [k_lo, k_hi) (SPLIT_KV), or whole."""
    if SPLIT_KV:
        lo = tl.maximum(lo, k_lo)
        hi = tl.minimum(hi, k_hi)
    return lo, hi


@triton.jit
def _head(BASE, b, h, start, stride_b, stride_h, stride_n):
    """The first row of segment b (from ``start``) in head h of a 4-D tensor."""
    return BASE + wide(b) * stride_b + wide(h) * stride_h + start * stride_n


@triton.jit
def _clean(BASE, rows, offs_d, stride_n, stride_d, mask):
    """Whether these rows of a fast kernel's output hold no NaN (so they are exact): the
    repair pass's test of the rows it owns."""
    x = load_rows(BASE, rows, offs_d, stride_n, stride_d, mask)
    return tl.max((x != x).to(tl.int32)) == 0


# The split-KV arguments take any value without a recompile: one compile per SPLIT_KV
# serves every split count.
@triton.jit(do_not_specialize=["stride_os", "stride_ls", "SPLITS", "SPLIT_KEYS"])
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, Q_LENS, K_LENS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_ln, stride_os, stride_ls,
    H, LQ, LK, HEAD_DIM, CHUNK, GROUP, WINDOW, SINKS, SPLITS, SPLIT_KEYS, qk_scale,
    VARLEN: tl.constexpr, HAS_Q_LENS: tl.constexpr, HAS_K_LENS: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, EXACT_NAN: tl.constexpr,
    SPLIT_KV: tl.constexpr,
):
    # Unsplit (SPLIT_KV off), none of the split's arithmetic is compiled in: the tuned tiles
    # keep their registers.
    if SPLIT_KV:
        splits = SPLITS
    else:
        splits = 1
    start_m, b, h, h_kv, q_start, q_len, q_extent, k_start, k_len, shift, split = (
        _query_program(CU_Q, CU_K, Q_LENS, K_LENS, H, LQ, LK, GROUP, splits, VARLEN,
                       HAS_Q_LENS, HAS_K_LENS, CAUSAL, BLOCK_M))

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_valid = offs_m < q_len
    owned = offs_m < q_extent
    # A split writes its own partial (o, lse) over keys [k_lo, k_hi): merged by the host.
    k_lo = 0
    k_hi = 0
    if SPLIT_KV:
        O = O + wide(split) * stride_os
        LSE = LSE + wide(split) * stride_ls
        k_lo = split * SPLIT_KEYS
        k_hi = k_lo + SPLIT_KEYS
    O_head = O + wide(b) * stride_ob + wide(h) * stride_oh + q_start * stride_on
    if EXACT_NAN:
        if _clean(O_head, offs_m, offs_d, stride_on, stride_od,
                  owned[:, None] & d_mask[None, :]):
            return
    Q_head = Q + wide(b) * stride_qb + wide(h) * stride_qh + q_start * stride_qn
    q = load_rows(Q_head, offs_m, offs_d, stride_qn, stride_qd,
                  row_valid[:, None] & d_mask[None, :])
    K_head = K + wide(b) * stride_kb + wide(h_kv) * stride_kh + k_start * stride_kn
    V_head = V + wide(b) * stride_vb + wide(h_kv) * stride_vh + k_start * stride_vn

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    kv_limit = _key_limit(offs_m, shift, CHUNK, k_len)
    kv_start = _window_start(offs_m, shift, CHUNK, WINDOW)
    s0, s1, w0, m1, u1, end = _key_range(start_m, q_len, shift, CHUNK, k_len, WINDOW, SINKS,
                                         HAS_WINDOW, BLOCK_M, BLOCK_N)
    # Each range clipped to the split's keys (SPLIT_KEYS is whole key blocks: a range keeps
    # its masked or unmasked kind).
    if HAS_WINDOW:
        lo, hi = _split_range(0, s0, k_lo, k_hi, SPLIT_KV)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                                   stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start,
                                   SINKS, qk_scale, lo, hi, False, HAS_WINDOW, EXACT_NAN,
                                   BLOCK_N, DOT_PRECISION)
        lo, hi = _split_range(s0, s1, k_lo, k_hi, SPLIT_KV)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                                   stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start,
                                   SINKS, qk_scale, lo, hi, True, HAS_WINDOW, EXACT_NAN,
                                   BLOCK_N, DOT_PRECISION)
        lo, hi = _split_range(w0, m1, k_lo, k_hi, SPLIT_KV)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                                   stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start,
                                   SINKS, qk_scale, lo, hi, True, HAS_WINDOW, EXACT_NAN,
                                   BLOCK_N, DOT_PRECISION)
    lo, hi = _split_range(m1, u1, k_lo, k_hi, SPLIT_KV)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                               stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                               qk_scale, lo, hi, False, HAS_WINDOW, EXACT_NAN, BLOCK_N,
                               DOT_PRECISION)
    lo, hi = _split_range(u1, end, k_lo, k_hi, SPLIT_KV)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd,
                               stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                               qk_scale, lo, hi, True, HAS_WINDOW, EXACT_NAN, BLOCK_N,
                               DOT_PRECISION)

    # A row that saw no key (past its segment's length, or before the first key under
    # bottom-right causality, or in a segment without keys) outputs 0; its log-sum-exp is
    # log(0) = -inf. A NaN sum is a row that saw a NaN: it stays NaN (not "> 0").
    seen = row_valid & (l_i != 0)
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) / LOG2E, float("-inf"))
    store_rows(O_head, offs_m, offs_d, stride_on, stride_od, out,
               owned[:, None] & d_mask[None, :])
    tl.store(LSE + wide(b) * stride_lb + wide(h) * stride_lh + q_start * stride_ln
             + offs_m * stride_ln, lse, mask=owned)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_deltab, stride_deltah, stride_deltan,
    H, N, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[b, h, i] = sum_d O[b, h, i, d] * dO[b, h, i, d], in fp32, for every row."""
    block, bh = split_program(tl.cdiv(N, BLOCK_M))
    b = wide(bh // H)
    h = wide(bh % H)
    # A packed tensor's rows are all of its segments': the block's first row in 64 bits.
    start = wide(block * BLOCK_M)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    valid = start + offs_m < N
    mask = valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = load_rows(O + b * stride_ob + h * stride_oh + start * stride_on, offs_m, offs_d,
                  stride_on, stride_od, mask)
    do = load_rows(DO + b * stride_dob + h * stride_doh + start * stride_don, offs_m, offs_d,
                   stride_don, stride_dod, mask)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * stride_deltab + h * stride_deltah + start * stride_deltan
             + offs_m * stride_deltan, delta, mask=valid)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qn,
                    stride_qd, stride_don, stride_dod, stride_ln, stride_deltan, offs_n,
                    offs_d, d_mask, q_len, shift, CHUNK, k_len, WINDOW, SINKS, qk_scale, lo,
                    hi, MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    EXACT_NAN: tl.constexpr, BLOCK_M: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_valid = offs_m < q_len
        q = load_rows(Q_head, offs_m, offs_d, stride_qn, stride_qd,
                      row_valid[:, None] & d_mask[None, :])
        do = load_rows(DO_head, offs_m, offs_d, stride_don, stride_dod,
                       row_valid[:, None] & d_mask[None, :])
        lse = _load_lse(LSE_head, offs_m, stride_ln, row_valid)
        delta = tl.load(DELTA_head + offs_m * stride_deltan, mask=row_valid, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        pT = tl.exp2(qkT * qk_scale - lse[None, :])
        if MASKED:
            visible = _sees(offs_n[:, None], _key_limit(offs_m, shift, CHUNK, k_len)[None, :],
                            _window_start(offs_m, shift, CHUNK, WINDOW)[None, :], SINKS,
                            HAS_WINDOW)
            pT = tl.where(visible, pT, 0.0)
        if MASKED and EXACT_NAN:
            # A NaN output gradient reaches dv through the keys its row sees, in its own
            # dim; do is cleared of it for the dot.
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dv = tl.where(_nan_hits(visible, do), float("nan"), dv)
            dv += tl.dot(pT.to(do.dtype), zero_nan(do), input_precision=DOT_PRECISION)
        else:
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        if MASKED and EXACT_NAN:
            # dpT (a NaN value or gradient) and delta (a row whose output is NaN) hold NaN
            # for unseen pairs too; a NaN query reaches the keys its row sees through dsT.
            dsT = tl.where(visible, dsT, 0.0)
            q = zero_nan(q)
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, Q_LENS, K_LENS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh, stride_ln,
    stride_deltab, stride_deltah, stride_deltan,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H_KV, LQ, LK, HEAD_DIM, CHUNK, GROUP, WINDOW, SINKS, scale, qk_scale,
    VARLEN: tl.constexpr, HAS_Q_LENS: tl.constexpr, HAS_K_LENS: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, EXACT_NAN: tl.constexpr,
):
    block, bh = split_program(tl.cdiv(LK, BLOCK_N))
    start_n = block * BLOCK_N
    b = bh // H_KV
    h_kv = bh % H_KV
    q_start, q_len, _ = segment(CU_Q, Q_LENS, b, LQ, VARLEN, HAS_Q_LENS)
    k_start, k_len, k_extent = segment(CU_K, K_LENS, b, LK, VARLEN, HAS_K_LENS)
    shift = k_len - q_len if CAUSAL else 0

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    owned = (offs_n[:, None] < k_extent) & d_mask[None, :]
    if EXACT_NAN:
        # (The heads' pointers are formed again for the stores: kept live across the loops,
        # they would cost the tuned tiles registers.)
        if (_clean(_head(DK, b, h_kv, k_start, stride_dkb, stride_dkh, stride_dkn), offs_n,
                   offs_d, stride_dkn, stride_dkd, owned)
                & _clean(_head(DV, b, h_kv, k_start, stride_dvb, stride_dvh, stride_dvn),
                         offs_n, offs_d, stride_dvn, stride_dvd, owned)):
            return
    kv_mask = (offs_n[:, None] < k_len) & d_mask[None, :]
    k = load_rows(K + wide(b) * stride_kb + wide(h_kv) * stride_kh + k_start * stride_kn,
                  offs_n, offs_d, stride_kn, stride_kd, kv_mask)
    v = load_rows(V + wide(b) * stride_vb + wide(h_kv) * stride_vh + k_start * stride_vn,
                  offs_n, offs_d, stride_vn, stride_vd, kv_mask)

    # Rows from q_lo on may see some key of this block; rows from q_full on see all of
    # them (only if the whole block is inside the segment: otherwise the length mask is
    # needed throughout). A block past the segment's keys visits no row.
    q_end = tl.where(start_n < k_len, q_len, 0)
    q_lo = (_first_row_seeing(start_n, shift, CHUNK) // BLOCK_M) * BLOCK_M
    q_full = tl.cdiv(_first_row_seeing(start_n + BLOCK_N - 1, shift, CHUNK), BLOCK_M) * BLOCK_M
    q_full = tl.minimum(tl.where(start_n + BLOCK_N <= k_len, q_full, q_end), q_end)
    q_stop = q_end
    u_end = q_end
    if HAS_WINDOW:
        # A non-sink key j leaves the window of the rows from (c(j) + WINDOW) * CHUNK -
        # shift on: rows up to the last key's bound may see some key of the block, rows
        # below the first non-sink key's bound see all of them (a block of sinks only is
        # seen by every row from q_full on).
        last_key = tl.minimum(start_n + BLOCK_N, k_len) - 1
        q_stop = tl.where(start_n < SINKS, q_end, tl.minimum(
            q_end, (last_key // CHUNK + WINDOW) * CHUNK - shift))
        window_full = tl.where(start_n + BLOCK_N <= SINKS, q_end,
                               (tl.maximum(start_n, SINKS) // CHUNK + WINDOW) * CHUNK - shift)
        q_full = tl.minimum(q_full, q_stop)
        u_end = tl.maximum(q_full, tl.minimum((window_full // BLOCK_M) * BLOCK_M, q_stop))

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):
        h = wide(h_kv * GROUP + g)
        Q_head = Q + wide(b) * stride_qb + h * stride_qh + q_start * stride_qn
        DO_head = DO + wide(b) * stride_dob + h * stride_doh + q_start * stride_don
        LSE_head = LSE + wide(b) * stride_lb + h * stride_lh + q_start * stride_ln
        DELTA_head = (DELTA + wide(b) * stride_deltab + h * stride_deltah
                      + q_start * stride_deltan)
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qn, stride_qd,
            stride_don, stride_dod, stride_ln, stride_deltan, offs_n, offs_d, d_mask, q_len,
            shift, CHUNK, k_len, WINDOW, SINKS, qk_scale, q_lo, q_full, True, HAS_WINDOW,
            EXACT_NAN, BLOCK_M, DOT_PRECISION)
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qn, stride_qd,
            stride_don, stride_dod, stride_ln, stride_deltan, offs_n, offs_d, d_mask, q_len,
            shift, CHUNK, k_len, WINDOW, SINKS, qk_scale, q_full, u_end, False, HAS_WINDOW,
            EXACT_NAN, BLOCK_M, DOT_PRECISION)
        if HAS_WINDOW:
            dk, dv = _bwd_dkdv_inner(
                dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qn, stride_qd,
                stride_don, stride_dod, stride_ln, stride_deltan, offs_n, offs_d, d_mask,
                q_len, shift, CHUNK, k_len, WINDOW, SINKS, qk_scale, u_end, q_stop, True,
                HAS_WINDOW, EXACT_NAN, BLOCK_M, DOT_PRECISION)

    store_rows(_head(DK, b, h_kv, k_start, stride_dkb, stride_dkh, stride_dkn), offs_n, offs_d,
               stride_dkn, stride_dkd, dk * scale, owned)
    store_rows(_head(DV, b, h_kv, k_start, stride_dvb, stride_dvh, stride_dvn), offs_n, offs_d,
               stride_dvn, stride_dvd, dv, owned)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd, stride_vn,
                  stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS, qk_scale, lo, hi,
                  MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, EXACT_NAN: tl.constexpr,
                  BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd, offs_n,
                        offs_d, d_mask, hi, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(qk * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        if MASKED:
            # Unseen pairs: p (past the lse's keys), dp (a NaN value) or delta (a NaN row)
            # may be NaN or inf there.
            ds = tl.where(_sees(offs_n[None, :], kv_limit[:, None], kv_start[:, None], SINKS,
                                HAS_WINDOW), ds, 0.0)
            if EXACT_NAN:
                k = zero_nan(k)  # a NaN key reaches the rows that see it through ds
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, Q_LENS, K_LENS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh, stride_ln,
    stride_deltab, stride_deltah, stride_deltan,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, LQ, LK, HEAD_DIM, CHUNK, GROUP, WINDOW, SINKS, scale, qk_scale,
    VARLEN: tl.constexpr, HAS_Q_LENS: tl.constexpr, HAS_K_LENS: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, EXACT_NAN: tl.constexpr,
):
    start_m, b, h, h_kv, q_start, q_len, q_extent, k_start, k_len, shift, _ = _query_program(
        CU_Q, CU_K, Q_LENS, K_LENS, H, LQ, LK, GROUP, 1, VARLEN, HAS_Q_LENS, HAS_K_LENS, CAUSAL,
        BLOCK_M)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_valid = offs_m < q_len
    rows_mask = row_valid[:, None] & d_mask[None, :]
    b, h, h_kv = wide(b), wide(h), wide(h_kv)
    owned = (offs_m[:, None] < q_extent) & d_mask[None, :]
    DQ_head = DQ + b * stride_dqb + h * stride_dqh + q_start * stride_dqn
    if EXACT_NAN:
        if _clean(DQ_head, offs_m, offs_d, stride_dqn, stride_dqd, owned):
            return
    q = load_rows(Q + b * stride_qb + h * stride_qh + q_start * stride_qn, offs_m, offs_d,
                  stride_qn, stride_qd, rows_mask)
    do = load_rows(DO + b * stride_dob + h * stride_doh + q_start * stride_don, offs_m,
                   offs_d, stride_don, stride_dod, rows_mask)
    lse = _load_lse(LSE + b * stride_lb + h * stride_lh + q_start * stride_ln, offs_m,
                    stride_ln, row_valid)
    delta = tl.load(DELTA + b * stride_deltab + h * stride_deltah + q_start * stride_deltan
                    + offs_m * stride_deltan, mask=row_valid, other=0.0)
    K_head = K + b * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V_head = V + b * stride_vb + h_kv * stride_vh + k_start * stride_vn

    kv_limit = _key_limit(offs_m, shift, CHUNK, k_len)
    kv_start = _window_start(offs_m, shift, CHUNK, WINDOW)
    s0, s1, w0, m1, u1, end = _key_range(start_m, q_len, shift, CHUNK, k_len, WINDOW, SINKS,
                                         HAS_WINDOW, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_WINDOW:
        dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                           stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                           qk_scale, 0, s0, False, HAS_WINDOW, EXACT_NAN, BLOCK_N,
                           DOT_PRECISION)
        dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                           stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                           qk_scale, s0, s1, True, HAS_WINDOW, EXACT_NAN, BLOCK_N,
                           DOT_PRECISION)
        dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                           stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                           qk_scale, w0, m1, True, HAS_WINDOW, EXACT_NAN, BLOCK_N,
                           DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                       stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                       qk_scale, m1, u1, False, HAS_WINDOW, EXACT_NAN, BLOCK_N, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kn, stride_kd,
                       stride_vn, stride_vd, offs_d, d_mask, kv_limit, kv_start, SINKS,
                       qk_scale, u1, end, True, HAS_WINDOW, EXACT_NAN, BLOCK_N, DOT_PRECISION)
    # A padding row (q = 0, lse = +inf) gets p = exp2(0 * NaN - inf) = NaN from a NaN key.
    dq = tl.where(row_valid[:, None], dq * scale, 0.0)
    store_rows(DQ_head, offs_m, offs_d, stride_dqn, stride_dqd, dq, owned)


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class Segments:
    """How rows group into segments, and what each row sees.

    Packed (``cu_q``/``cu_k``, int32 (B + 1,)): q, k, v are the (1, H, total, D) views of
    (total, H, D) tensors. Padded: q is (B, H, LQ, D), k and v (B, H_kv, LK, D), with
    optional per-sample valid lengths ``q_lens``/``k_lens``. ``max_q``/``max_k`` bound the
    rows of a segment (the grid, and the kernels' LQ/LK): padded, they are LQ and LK
    themselves. ``chunk`` and ``causal`` define ``limit`` (module doc).
    """

    max_q: int
    max_k: int
    chunk: int = NO_CHUNKS
    causal: bool = False
    cu_q: Tensor | None = None
    cu_k: Tensor | None = None
    q_lens: Tensor | None = None
    k_lens: Tensor | None = None
    window: int | None = None
    sinks: int = 0

    @classmethod
    def chunked(cls, max_q: int, chunk_size: int, lengths: Tensor | None = None, *,
                max_k: int | None = None, window: int | None = None, sinks: int = 0,
                cu_q: Tensor | None = None, cu_k: Tensor | None = None,
                top_left: bool = False) -> Segments:
        """Chunked causal attention (the block-causal family without teacher forcing):
        each padded sample, or packed segment of ``cu_q``/``cu_k``, is a segment whose
        queries are its last positions; row ``i`` at position ``p`` sees key ``j`` iff
        ``c(j) <= c(p)`` and (no window, ``c(p) - c(j) < window`` or ``j < sinks``).
        Padded samples may have ``lengths`` (queries and keys alike). ``top_left``: the
        queries are the *first* positions instead (``p = i``), as teacher forcing's noisy
        queries against the clean keys need."""
        return cls(max_q=max_q, max_k=max_q if max_k is None else max_k, chunk=chunk_size,
                   causal=not top_left, cu_q=cu_q, cu_k=cu_k, q_lens=lengths, k_lens=lengths,
                   window=window, sinks=sinks)

    @classmethod
    def cross(cls, *, cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None,
              k_lengths: Tensor | None, max_seqlen_q: int, max_seqlen_k: int,
              causal: bool) -> Segments:
        """Cross-attention: each query segment sees all keys of its own key segment
        (``causal``: bottom-right aligned, query i sees keys j <= i + k_len - q_len).
        Packed with int32 ``cu_seqlens`` (flash-attn's varlen convention), or padded with
        optional per-sample key lengths (queries are never limited)."""
        return cls(max_q=max_seqlen_q, max_k=max_seqlen_k, chunk=1 if causal else NO_CHUNKS,
                   causal=causal, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, k_lens=k_lengths)

    @property
    def varlen(self) -> bool:
        return self.cu_q is not None

    def count(self, q: Tensor) -> int:
        return self.cu_q.shape[0] - 1 if self.varlen else q.shape[0]

    def pointers(self, q: Tensor) -> tuple[Tensor, ...]:
        # Absent arrays are never read (their constexpr flag is off): any pointer will do.
        return tuple(q if t is None else t for t in (self.cu_q, self.cu_k, self.q_lens,
                                                     self.k_lens))

    def strides(self, x: Tensor) -> tuple[int, ...]:
        # Every packed segment addresses batch 0 of the (1, H, total, D) view.
        return (0 if self.varlen else x.stride(0), *x.stride()[1:])

    def constexprs(self, cfg: KernelConfig, q: Tensor, exact_nan: bool) -> dict:
        return dict(VARLEN=self.varlen, HAS_Q_LENS=self.q_lens is not None,
                    HAS_K_LENS=self.k_lens is not None, CAUSAL=self.causal,
                    HAS_WINDOW=self.window is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                    BLOCK_D=head_block(q.shape[-1]), DOT_PRECISION=dot_precision(q.dtype),
                    EXACT_NAN=exact_nan)

    def problem(self, q: Tensor, k: Tensor) -> tuple[int, ...]:
        """LQ, LK, HEAD_DIM, CHUNK, GROUP, WINDOW, SINKS. LQ and LK are the most rows of a
        segment: the kernels size their flat grid's row blocks by them (``_program``)."""
        return (self.max_q, self.max_k, q.shape[3], self.chunk, q.shape[1] // k.shape[1],
                0 if self.window is None else self.window, self.sinks)


def _config(name: str, q: Tensor, capability, exact_nan: bool = False) -> KernelConfig:
    """``name``'s config, or its NaN repair pass's (``name + "_nan"``) with ``exact_nan``."""
    return kernel_config(name + "_nan" if exact_nan else name, q.shape[-1], q.dtype,
                         capability or device_capability(q.device))


def attn_fwd_launch(q, k, v, o, lse, seg: Segments, scale: float, capability=None,
                    exact_nan: bool = False, splits: int = 1) -> Launch:
    """The forward kernel's grid, arguments and config for these (possibly meta) tensors;
    ``capability`` (default: q's device) picks the config. ``exact_nan``: the repair pass
    that follows it (module doc), on the same arguments. ``splits`` > 1: the split-KV
    forward, o (splits, *q.shape) and lse (splits, *q.shape[:3]) the partials of each
    split's keys (whole key blocks, the first splits - 1 of equal size)."""
    cfg = _config("attn_fwd", q, capability, exact_nan)
    split_keys = triton.cdiv(triton.cdiv(seg.max_k, splits), cfg.block_n) * cfg.block_n
    partial = splits > 1
    o_rows, lse_rows = (o[0], lse[0]) if partial else (o, lse)
    split_strides = (o.stride(0), lse.stride(0)) if partial else (0, 0)
    args = (q, k, v, o_rows, lse_rows, *seg.pointers(q), *seg.strides(q), *seg.strides(k),
            *seg.strides(v), *seg.strides(o_rows), *seg.strides(lse_rows), *split_strides,
            q.shape[1], *seg.problem(q, k), splits, split_keys if partial else NO_CHUNKS,
            scale * LOG2E.value)
    grid = flat_grid(triton.cdiv(seg.max_q, cfg.block_m) * splits, seg.count(q) * q.shape[1])
    return Launch(_attn_fwd_kernel, grid, args,
                  seg.constexprs(cfg, q, exact_nan) | {"SPLIT_KV": partial}, cfg)


def attn_bwd_delta_launch(o, do, delta, capability=None) -> Launch:
    B, H, N, D = o.shape
    cfg = _config("attn_bwd_delta", o, capability)
    args = (o, do, delta, *o.stride(), *do.stride(), *delta.stride(), H, N, D)
    return Launch(_attn_bwd_delta_kernel, flat_grid(triton.cdiv(N, cfg.block_m), B * H), args,
                  dict(BLOCK_M=cfg.block_m, BLOCK_D=head_block(D)), cfg)


def attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, seg: Segments, scale: float,
                         capability=None, exact_nan: bool = False) -> Launch:
    cfg = _config("attn_bwd_dkdv", q, capability, exact_nan)
    args = (q, k, v, do, lse, delta, dk, dv, *seg.pointers(q), *seg.strides(q),
            *seg.strides(k), *seg.strides(v), *seg.strides(do), *seg.strides(lse),
            *seg.strides(delta), *seg.strides(dk), *seg.strides(dv), k.shape[1],
            *seg.problem(q, k), scale, scale * LOG2E.value)
    grid = flat_grid(triton.cdiv(seg.max_k, cfg.block_n), seg.count(q) * k.shape[1])
    return Launch(_attn_bwd_dkdv_kernel, grid, args, seg.constexprs(cfg, q, exact_nan), cfg)


def attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg: Segments, scale: float,
                       capability=None, exact_nan: bool = False) -> Launch:
    cfg = _config("attn_bwd_dq", q, capability, exact_nan)
    args = (q, k, v, do, lse, delta, dq, *seg.pointers(q), *seg.strides(q), *seg.strides(k),
            *seg.strides(v), *seg.strides(do), *seg.strides(lse), *seg.strides(delta),
            *seg.strides(dq), q.shape[1], *seg.problem(q, k), scale, scale * LOG2E.value)
    grid = flat_grid(triton.cdiv(seg.max_q, cfg.block_m), seg.count(q) * q.shape[1])
    return Launch(_attn_bwd_dq_kernel, grid, args, seg.constexprs(cfg, q, exact_nan), cfg)


def _repair_may_write(*outputs: Tensor) -> bool:
    """Whether a repair pass over these outputs can write anything. On a GPU it is always
    launched: each program checks its own rows, with no host sync. Under the interpreter
    (CPU tensors, where a host read costs nothing) a pass is skipped when the outputs hold
    no NaN, since then every program of it would return at once."""
    return outputs[0].device.type != "cpu" or any(t.isnan().any() for t in outputs)


def attn_fwd(q: Tensor, k: Tensor, v: Tensor, seg: Segments, scale: float,
             dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Forward: ``(o, lse)``, o laid out like q (in ``dtype``, default q's), lse (B, H, L)
    fp32 in natural log (-inf for a row that sees no key, where o is 0; NaN for a row that
    sees a NaN). Split over the keys (:func:`key_splits`) when its query blocks cannot fill
    the GPU, the partials merged by their log-sum-exps."""
    splits = key_splits(q, seg)
    if splits == 1:
        o = empty_like(q, dtype=dtype)
        lse = empty(q.shape[:3], dtype=torch.float32, device=q.device)
        _run_forward(q, k, v, o, lse, seg, scale)
        return o, lse
    o_parts = empty((splits, *q.shape), dtype=torch.float32, device=q.device)
    lse_parts = empty((splits, *q.shape[:3]), dtype=torch.float32, device=q.device)
    _run_forward(q, k, v, o_parts, lse_parts, seg, scale, splits)
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    for o_part, lse_part in zip(o_parts, lse_parts):
        _merge_into(o, lse, o_part, lse_part)
    return _like(o, q, dtype), lse


def _run_forward(q, k, v, o, lse, seg, scale, splits: int = 1) -> None:
    attn_fwd_launch(q, k, v, o, lse, seg, scale, splits=splits).run()
    if _repair_may_write(o):
        attn_fwd_launch(q, k, v, o, lse, seg, scale, exact_nan=True, splits=splits).run()


def _merge_into(o: Tensor, lse: Tensor, o_part: Tensor, lse_part: Tensor) -> None:
    """Attention over the union of two disjoint key sets from each one's (o, lse): o and
    lse (fp32, the running result, updated in place) with a part's. A part whose row saw
    none of its keys (lse -inf) weighs 0; a NaN lse makes the row NaN."""
    merged = torch.logaddexp(lse, lse_part)
    o.copy_(o * _weight(lse, merged) + o_part * _weight(lse_part, merged))
    lse.copy_(merged)


# The fewest key blocks a split of the split-KV forward gets, and the programs (query
# blocks x segments x heads) per SM below which a forward is split.
_MIN_SPLIT_BLOCKS = 4
_PROGRAMS_PER_SM = 2
_FORCED_SPLITS: list[int] = []


def key_splits(q: Tensor, seg: Segments) -> int:
    """How many key splits the forward of these inputs runs in (1: none): on a GPU,
    :func:`split_count` for its SMs and programs; under the interpreter 1, or what
    :func:`force_key_splits` says."""
    if _FORCED_SPLITS:
        return _FORCED_SPLITS[-1]
    if q.device.type != "cuda":
        return 1
    cfg = _config("attn_fwd", q, None)
    programs = triton.cdiv(seg.max_q, cfg.block_m) * seg.count(q) * q.shape[1]
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return split_count(programs, sms, seg.max_k, cfg.block_n)


def split_count(programs: int, sms: int, max_k: int, block_n: int) -> int:
    """Key splits for a forward of ``programs`` (query blocks x segments x heads) on
    ``sms`` SMs: enough that every SM gets ``_PROGRAMS_PER_SM`` programs (Mirasol's
    32-token chunk against thousands of cached latents; a decoding step), each split at
    least ``_MIN_SPLIT_BLOCKS`` key blocks of ``block_n`` (flash-decoding); 1 when the
    query blocks fill the GPU already."""
    wanted = triton.cdiv(_PROGRAMS_PER_SM * sms, max(programs, 1))
    return max(1, min(wanted, max_k // (_MIN_SPLIT_BLOCKS * block_n)))


@contextlib.contextmanager
def force_key_splits(splits: int) -> Iterator[None]:
    """Run every forward split in ``splits`` over the keys (tests: the split-KV path and
    its merge on the interpreter)."""
    _FORCED_SPLITS.append(splits)
    try:
        yield
    finally:
        _FORCED_SPLITS.pop()


def attn_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
             seg: Segments, scale: float,
             dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``(dq, dk, dv)`` laid out like q, k, v (in ``dtype``, default theirs)."""
    delta = empty(lse.shape, dtype=torch.float32, device=q.device)
    dq, dk, dv = (empty_like(t, dtype=dtype) for t in (q, k, v))
    attn_bwd_delta_launch(o, do, delta).run()
    attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, seg, scale).run()
    attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg, scale).run()
    if _repair_may_write(dk, dv):
        attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, seg, scale, exact_nan=True).run()
    if _repair_may_write(dq):
        attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg, scale, exact_nan=True).run()
    return dq, dk, dv


# ------------------------------------------------- the launchers mirasol.ops calls


def chunked_attn_fwd(q, k, v, chunk_size: int, scale: float, lengths=None, *,
                     window: int | None = None, sinks: int = 0, teacher_forcing: bool = False,
                     cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int | None = None,
                     max_seqlen_k: int | None = None):
    """Chunked causal attention, the block-causal family (:meth:`Segments.chunked`), on
    4-D tensors: padded q (B, H, Nq, D), k/v (B, H_kv, Nk, D), Nq <= Nk, queries the last
    Nq positions (``lengths``: per-sample lengths, Nq = Nk); or the (1, H, total, D) views
    of packed tensors with int32 ``cu_seqlens_q/_k`` and the longest segments. Teacher
    forcing (padded, no lengths): :func:`_teacher_forcing_pieces`, merged by their
    log-sum-exp. Returns ``(o, lse)``: o like q, lse (B, H, Nq) fp32 (natural log, -inf
    for a row that sees no key, where o is 0)."""
    if teacher_forcing:
        return _teacher_forcing_fwd(q, k, v, chunk_size, window, sinks, scale)
    seg = Segments.chunked(max_seqlen_q or q.shape[2], chunk_size, lengths,
                           max_k=max_seqlen_k or k.shape[2], window=window, sinks=sinks,
                           cu_q=cu_seqlens_q, cu_k=cu_seqlens_k)
    return attn_fwd(q, k, v, seg, scale)


def chunked_attn_bwd(do, q, k, v, o, lse, chunk_size: int, scale: float, lengths=None, *,
                     window: int | None = None, sinks: int = 0, teacher_forcing: bool = False,
                     cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int | None = None,
                     max_seqlen_k: int | None = None):
    """Returns ``(dq, dk, dv)`` laid out like ``q, k, v``."""
    if teacher_forcing:
        return _teacher_forcing_bwd(do, q, k, v, o, lse, chunk_size, window, sinks, scale)
    seg = Segments.chunked(max_seqlen_q or q.shape[2], chunk_size, lengths,
                           max_k=max_seqlen_k or k.shape[2], window=window, sinks=sinks,
                           cu_q=cu_seqlens_q, cu_k=cu_seqlens_k)
    return attn_bwd(do, q, k, v, o, lse, seg, scale)


def _teacher_forcing_pieces(n: int, chunk_size: int, window: int | None, sinks: int):
    """Teacher forcing on (B, H, n, D) tensors, n = 2L (``mirasol.masks``), as launches of
    the chunked kernels: ``(query rows, key rows, Segments)`` of each piece.

    * clean queries against clean keys: the family's rule;
    * noisy queries against their own chunk's noisy keys: a window of one chunk;
    * noisy queries of chunks >= 1 against the clean keys of earlier chunks: the rule
      with the queries first-aligned one chunk late (row i' = i - chunk_size of the noisy
      half, so c(i') = c(i) - 1 bounds the causal prefix) and the window one chunk
      shorter (``c(i) - c(j) < window`` is ``c(i') - c(j) < window - 1``). Absent when
      the noisy half is one chunk.
    """
    half = n // 2
    clean, noisy = slice(0, half), slice(half, n)
    pieces = [(clean, clean, Segments.chunked(half, chunk_size, window=window, sinks=sinks)),
              (noisy, noisy, Segments.chunked(half, chunk_size, window=1))]
    if half > chunk_size:
        pieces.append((slice(half + chunk_size, n), clean, Segments.chunked(
            half - chunk_size, chunk_size, max_k=half, top_left=True, sinks=sinks,
            window=None if window is None else window - 1)))
    return pieces


def _teacher_forcing_fwd(q, k, v, chunk_size, window, sinks, scale):
    # Each piece in fp32; a noisy row's pieces merged by their log-sum-exps, then rounded
    # once to q's dtype.
    pieces = _teacher_forcing_pieces(q.shape[2], chunk_size, window, sinks)
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    for rows, keys, seg in pieces:
        _merge_into(o[:, :, rows], lse[:, :, rows],
                    *attn_fwd(q[:, :, rows], k[:, :, keys], v[:, :, keys], seg, scale,
                              dtype=torch.float32))
    return _like(o, q), lse


def _weight(lse_piece: Tensor, lse: Tensor) -> Tensor:
    """exp(lse_piece - lse) as a (..., 1) factor; 0 where the piece saw nothing."""
    return torch.where(lse_piece == float("-inf"), 0.0, torch.exp(lse_piece - lse))[..., None]


def _teacher_forcing_bwd(do, q, k, v, o, lse, chunk_size, window, sinks, scale):
    # Each piece's gradients from the merged output and log-sum-exp (its probabilities are
    # exp(s - lse) of the whole row), summed in fp32 where pieces share rows or keys.
    dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (q, k, v))
    for rows, keys, seg in _teacher_forcing_pieces(q.shape[2], chunk_size, window, sinks):
        gq, gk, gv = attn_bwd(do[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys],
                              o[:, :, rows], lse[:, :, rows], seg, scale, dtype=torch.float32)
        dq[:, :, rows] += gq
        dk[:, :, keys] += gk
        dv[:, :, keys] += gv
    return tuple(_like(g, t) for g, t in ((dq, q), (dk, k), (dv, v)))


def _like(x: Tensor, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """x copied into an output buffer laid out like t, in ``dtype`` (default t's)."""
    out = empty_like(t, dtype=dtype)
    out.copy_(x)
    return out


def cross_attn_fwd(q, k, v, scale: float, **segments):
    """Cross-attention (:meth:`Segments.cross`, whose keywords ``segments`` are) on 4-D
    tensors: the (1, H, total, D) views of packed tensors, or padded (B, H, L, D). Returns
    ``(o, lse)``: o laid out like q; lse (B, H, L) fp32, natural log, -inf for a row that
    sees no key (its o is 0)."""
    return attn_fwd(q, k, v, Segments.cross(**segments), scale)


def cross_attn_bwd(do, q, k, v, o, lse, scale: float, **segments):
    """Returns ``(dq, dk, dv)`` laid out like ``q, k, v``."""
    return attn_bwd(do, q, k, v, o, lse, Segments.cross(**segments), scale)
