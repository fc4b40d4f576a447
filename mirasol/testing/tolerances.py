"""The tolerance table: the only place a tolerance is set in mirasol.

The parity rule (DESIGN.md §5, flash-attention's): against a float64 oracle,

    err(fast) <= FACTOR * err(reference computed in the input dtype) + floor(dtype)

where ``err(x) = max |x - oracle|``, FACTOR is 2 for outputs and 3 for gradients, and the
floor (below) is applied at the problem's magnitude ``max(1, max|oracle|)``, the max taken
over every tensor compared for one call (output and gradients): a gradient that cancels to
exactly zero is still computed from terms of that size; a gradient's accumulator part also
at the size of the row dot products its backward subtracts (``gradient_terms``).
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
# its dtype at the result's magnitude, or 8 roundings of the accumulator (fp32, fp64 for
# fp64 inputs) for sums of a few hundred terms at the magnitude of those terms, whichever
# is larger. It matters when the reference is exact by luck (one key: softmax = 1, its
# gradient cancels to exactly 0 in the reference but to rounding noise in a fused
# backward); elsewhere 2x/3x the reference's error dominates.
RESULT_FLOOR: dict[torch.dtype, float] = dict(UNIT_ROUNDOFF)
ACCUMULATOR_FLOOR: dict[torch.dtype, float] = {
    dtype: 8 * UNIT_ROUNDOFF[torch.promote_types(dtype, torch.float32)]
    for dtype in UNIT_ROUNDOFF
}
# float64 inputs are the one case where the floor is the whole allowance: the reference in
# the input dtype *is* the oracle, so its error is 0 by construction and nothing measures
# what the summation order alone costs. A blocked kernel's sums of a few hundred terms
# round once per block merge as well as once per term; 16 roundings (measured worst 10.7:
# PyTorch's fused CPU kernel, cross_attention_padded dv over 66 terms, on an AMD EPYC
# with MKL; 8 was set for fp32's accumulator beside a reference error that dominates).
ACCUMULATOR_FLOOR[torch.float64] = 16 * UNIT_ROUNDOFF[torch.float64]
# The floor per unit of magnitude when the summed terms are the size of the result.
ATOL_FLOOR: dict[torch.dtype, float] = {
    dtype: max(RESULT_FLOOR[dtype], ACCUMULATOR_FLOOR[dtype]) for dtype in UNIT_ROUNDOFF
}


def magnitude(*oracles: torch.Tensor) -> float:
    """max(1, max|x|) over the oracle tensors of one call."""
    return max([1.0] + [t.abs().max().item() for t in oracles if t.numel()])


def gradient_terms(out: torch.Tensor, grad_out: torch.Tensor) -> float:
    """The magnitude of the terms a softmax-weighted sum's gradients are computed from:
    max over rows of sum_i |grad_out_i * out_i| along the last (feature) dim. Each op's
    backward forms D = <grad_out, out> per row (flash-attention's delta; token pooling's)
    and subtracts it from <grad_out, value> of the same size, so where the two cancel
    (saturated softmax: a gradient that is exactly 0) the rounding left is that of a dot
    product, bounded by its absolute sum, which can exceed every compared tensor (measured:
    token pooling at logit scale 1000, dim 40, a row's absolute sum 33 against tensors of at
    most 2.8, the fused backward 4 float32 ulps of a term of 6.7 off the exact 0)."""
    if not out.numel():
        return 1.0
    return max(1.0, (out.double() * grad_out.double()).abs().sum(-1).max().item())


def floor(dtype: torch.dtype, magnitude: float, terms: float | None = None) -> float:
    """The absolute floor for results of ``dtype`` of this magnitude, summed from terms of
    magnitude ``terms`` (default: the result's)."""
    if dtype not in ATOL_FLOOR:
        raise KeyError(f"no tolerance floor for {dtype}; known: {list(ATOL_FLOOR)}")
    terms = magnitude if terms is None else max(terms, magnitude)
    return max(RESULT_FLOOR[dtype] * magnitude, ACCUMULATOR_FLOOR[dtype] * terms)


def factor(is_grad: bool) -> float:
    return GRAD_FACTOR if is_grad else OUTPUT_FACTOR


# -- Tolerances outside the parity rule --------------------------------------------------
# These compare against something other than a float64 run of the same computation (a
# formula, another decoder path, another process count), so the rule above cannot set them.
# Each figure is here with why it holds; the tests that use them name them. The dicts are
# keyword arguments of torch.testing.assert_close / numpy.testing.assert_allclose.

# The Slaney mel filterbank, computed in float64 and stored as float32, against the float64
# formulas: one rounding to float32 (relative 2^-24 = 6e-8; measured 5.7e-8), so 1e-6 is
# 16 roundings; entries outside every triangle must be 0 to within 1e-9 (measured: exactly 0).
MEL_FILTERBANK = {"rtol": 1e-6, "atol": 1e-9}
# Each triangle's area (its sum over FFT bins times the bin width) is 1 up to the Riemann sum
# of a piecewise-linear function: for a symmetric triangle W bins wide the error is at most
# 2/W^2 (one eighth of each kink's slope change), 3.1% at W = 8. Checked on triangles wider
# than MEL_AREA_MIN_BINS bins (measured worst 1.2%).
MEL_AREA = {"rtol": 0.05}
MEL_AREA_MIN_BINS = 8
# Log-mel spectrogram (values of magnitude up to ~4) against a float64 numpy STFT: in float32,
# the STFT and the mel matmul over a few hundred terms (measured worst 2.4e-6); in float64,
# limited by the float32-stored filterbank (6e-8 relative, measured worst 2.5e-7).
LOG_MEL_FLOAT32 = {"rtol": 0.0, "atol": 1e-5}
LOG_MEL_FLOAT64 = {"rtol": 0.0, "atol": 1e-6}
# torch.compile's log-mel against eager, float32: the same sums in inductor's order, so a few
# float32 roundings of the few-hundred-term STFT and mel sums apart.
LOG_MEL_COMPILED = {"rtol": 1e-5, "atol": 1e-5}

# load_media's frames against the same source frame decoded, cropped and resized directly:
# the same float32 arithmetic, apart from load_media's clamp to [0, 1] (antialiased bilinear
# interpolation overshoots it by a few float32 roundings); measured: identical. A frame
# differs from the next source frame by far more than PYAV_FRAME_CHANGE (measured >= 0.12),
# which shows the test can tell the frames apart.
PYAV_FRAME = {"rtol": 0.0, "atol": 1e-5}
PYAV_FRAME_CHANGE = 1e-3
# load_media's audio (decoded from a seek 0.2 s before the clip, resampled to mono)
# against the whole track decoded and resampled in one pass: an AAC decoder restarted at a
# seek reconstructs its first frame only approximately and the resampler's filter restarts,
# both inside the preroll; 1e-4 is -80 dB of full scale (measured here: identical).
PYAV_AUDIO = {"rtol": 0.0, "atol": 1e-4}

# Parameters after a few steps of 2-process data-parallel training against 1 process on the
# same global batch. ContextNorm divides by each feature's std (gain up to 1/sqrt(eps) = 31),
# so the rounding of the all-reduced moments (another summation order than one process)
# reaches the gradients amplified, and Adam's normalization amplifies it again where
# gradients are small: 1e-4 after 4 steps (measured worst 6e-5 relative), while the losses
# agree to float32 rounding.
DATA_PARALLEL_PARAMETERS = {"rtol": 1e-4, "atol": 1e-4}


def adam_drift(steps: int, lr: float) -> float:
    """The most two runs can differ in a parameter whose true gradient is 0 (e.g. a key bias,
    which softmax ignores): what is left is rounding noise, which Adam's normalization turns
    into steps of up to ``lr`` either way in each run."""
    return 2 * steps * lr


# A change is a dependence, not rounding, when it moves float32 outputs of magnitude ~1 by
# more than this: 100x a few roundings of their sums (~1e-6), while a real dependence moves
# them by ~1e-2 (the flat baseline's first chunk when the last changes: measured 0.05).
DEPENDENCE = 1e-4
