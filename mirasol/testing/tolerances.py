"""The tolerance table: the only place a tolerance is set in mirasol.

The parity rule (DESIGN.md §5, flash-attention's): against a float64 oracle,

    err(fast) <= FACTOR * err(reference computed in the input dtype) + floor(dtype)

where ``err(x) = max |x - oracle|``, FACTOR is 2 for outputs and 3 for gradients, and the
floor (below) is applied at the problem's magnitude ``max(1, max|oracle|)``, the max taken
over every tensor compared for one call (output and gradients): a gradient that cancels to
exactly zero is still computed from terms of that size.
"""

from __future__ import annotations

import torch

OUTPUT_FACTOR = 2.0
GRAD_FACTOR = 3.0

# Unit roundoff u = 2^-p of each dtype (p = significand bits).
UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
# The floor is the error an exact algorithm cannot avoid: one rounding of the result to
# its dtype, or 8 roundings of the accumulator (fp32, fp64 for fp64 inputs) for sums of a
# few hundred terms, whichever is larger. It matters when the reference is exact by luck
# (one key: softmax = 1, its gradient cancels to exactly 0 in the reference but to rounding
# noise in a fused backward); elsewhere 2x/3x the reference's error dominates.
ATOL_FLOOR: dict[torch.dtype, float] = {
    dtype: max(u, 8 * UNIT_ROUNDOFF[torch.promote_types(dtype, torch.float32)])
    for dtype, u in UNIT_ROUNDOFF.items()
}


def magnitude(*oracles: torch.Tensor) -> float:
    """max(1, max|x|) over the oracle tensors of one call."""
    return max([1.0] + [t.abs().max().item() for t in oracles if t.numel()])


def floor(dtype: torch.dtype, magnitude: float) -> float:
    """The absolute floor for results of ``dtype`` in a problem of this magnitude."""
    if dtype not in ATOL_FLOOR:
        raise KeyError(f"no tolerance floor for {dtype}; known: {list(ATOL_FLOOR)}")
    return ATOL_FLOOR[dtype] * magnitude


def factor(is_grad: bool) -> float:
    return GRAD_FACTOR if is_grad else OUTPUT_FACTOR
