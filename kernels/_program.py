"""What the kernels' programs share: the launch grid and its decoding, segment bounds, and
masked row loads and stores.

The grid is one flat axis of ``inner * outer`` programs (CUDA allows 2^31 - 1 on x, only
65,535 on y and z): program ``pid`` is inner block ``pid % inner`` of outer item
``pid // inner``, so programs of one outer item (one segment and head) are consecutive,
as on a 2-D grid with the blocks on x. Each kernel recomputes ``inner`` from its own
arguments (e.g. ``cdiv(LQ, BLOCK_M)``), so the grid adds no parameter.

Offsets: a segment's, head's or batch's base offset is formed in 64 bits (a tensor may
exceed 2^31 elements); offsets within one head of one segment (``rows * stride``) stay in
32 bits, which bounds them to 2^31 - 1 elements.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The kernels work in base 2: exp(x) = exp2(x * LOG2E).
LOG2E = tl.constexpr(1.4426950408889634)
# CUDA's limit on a grid's x dimension.
MAX_PROGRAMS = 2**31 - 1


def flat_grid(inner: int, outer: int) -> tuple[int]:
    """The grid of ``inner`` blocks for each of ``outer`` items (see the module doc)."""
    if inner * outer > MAX_PROGRAMS:
        raise ValueError(f"{inner} blocks x {outer} (segments x heads) = {inner * outer} "
                         f"programs exceed CUDA's grid limit of {MAX_PROGRAMS}; split the batch")
    return (inner * outer,)


@triton.jit
def split_program(inner):
    """(inner block, outer item) of this program on a :func:`flat_grid`."""
    pid = tl.program_id(0)
    outer = pid // inner
    return pid - outer * inner, outer


@triton.jit
def segment(CU, LENS, b, L, VARLEN: tl.constexpr, HAS_LENS: tl.constexpr):
    """(first row, length, extent) of segment b; the first row in 64 bits. Packed: rows
    [CU[b], CU[b+1]), extent = length (the rows this segment owns). Padded: rows
    [0, LENS[b] or L), extent = L (the sample's rows past its length are written too, as
    zeros)."""
    if VARLEN:
        start = tl.load(CU + b)
        length = tl.load(CU + b + 1) - start
        extent = length
    else:
        start = 0
        length = L
        if HAS_LENS:
            length = tl.load(LENS + b).to(tl.int32)
        extent = L
    return tl.cast(start, tl.int64), length, extent


@triton.jit
def wide(x):
    """x in 64 bits: for base offsets (index x stride) that may pass 2^31."""
    return tl.cast(x, tl.int64)


@triton.jit
def load_rows(BASE, rows, offs_d, stride_n, stride_d, mask):
    return tl.load(BASE + rows[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask,
                   other=0.0)


@triton.jit
def store_rows(BASE, rows, offs_d, stride_n, stride_d, value, mask):
    tl.store(BASE + rows[:, None] * stride_n + offs_d[None, :] * stride_d,
             value.to(BASE.dtype.element_ty), mask=mask)


@triton.jit
def zero_nan(x):
    """x with NaN replaced by 0: an operand of a dot in which some products belong to
    masked-out pairs (a product 0 * NaN would be NaN where the true sum has no term)."""
    return tl.where(x == x, x, 0.0)
