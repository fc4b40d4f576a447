"""The parity harness itself: it must fail wrong answers, loudly and precisely."""

import math
from functools import partial

import pytest
import torch

from mirasol.ops import chunked_causal_attention
from mirasol.testing import (ATOL_FLOOR, tolerances, assert_parity, compare_module_with_oracle,
                             compare_with_oracle, parity_report, poison_allocations)


def _op(backend):
    return partial(chunked_causal_attention, chunk_size=3, backend=backend)


def _inputs(dtype=torch.float32):
    return tuple(torch.randn(2, 2, 12, 16, dtype=dtype) for _ in range(3))


def test_a_correct_backend_passes_and_reports_every_tensor():
    reports = compare_with_oracle(_op("torch"), _op("reference"), _inputs(), names="qkv")
    assert [r.name for r in reports] == ["out", "dq", "dk", "dv"]
    assert_parity(reports)
    assert all(0 <= r.ratio <= 1 for r in reports)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_slightly_wrong_backend_fails_with_a_verbose_report(dtype):
    def wrong(q, k, v):  # a 0.5% error: well inside any loose tolerance, outside the rule
        return _op("torch")(q, k, v) * 1.005

    reports = compare_with_oracle(wrong, _op("reference"), _inputs(dtype), names="qkv")
    with pytest.raises(AssertionError) as info:
        assert_parity(reports)
    text = str(info.value)
    assert "out [" in text and "FAIL" in text and "ratio" in text and "oracle" in text
    assert "allowed" in text and "reference err" in text and "floor" in text


def test_nan_is_an_infinite_error():
    oracle = torch.ones(3, dtype=torch.float64)
    actual = torch.tensor([1.0, float("nan"), 1.0])
    report = parity_report("out", actual, actual.nan_to_num(1.0), oracle)
    assert math.isinf(report.err) and not report.ok and report.where == (1,)


def test_the_floor_is_one_rounding_or_eight_accumulator_roundings():
    assert ATOL_FLOOR[torch.float16] == 2.0**-11
    assert ATOL_FLOOR[torch.bfloat16] == 2.0**-8
    assert ATOL_FLOOR[torch.float32] == 8 * 2.0**-24
    # float64's floor is its whole allowance (the reference is the oracle there): 16.
    assert ATOL_FLOOR[torch.float64] == 16 * 2.0**-53


def test_a_gradients_accumulator_floor_is_at_the_size_of_its_row_dot_products():
    out = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    grad_out = torch.tensor([[3.0, 4.0], [1.0, 9.0]], dtype=torch.float64)
    assert tolerances.gradient_terms(out, grad_out) == 11.0  # |3 * 1| + |4 * -2|
    assert tolerances.floor(torch.float32, 2.0, 11.0) == 8 * 2.0**-24 * 11
    # 16-bit results: one rounding of the result still dominates.
    assert tolerances.floor(torch.bfloat16, 2.0, 11.0) == 2.0**-8 * 2
    # Terms smaller than the result never lower the floor.
    assert tolerances.floor(torch.float32, 2.0, 0.5) == tolerances.floor(torch.float32, 2.0)


def test_poison_allocations_fills_fresh_buffers_and_restores_torch():
    empty = torch.empty
    with poison_allocations():
        assert torch.empty(4).isnan().all()
        assert torch.empty_like(torch.zeros(2, dtype=torch.float16)).isnan().all()
        assert (torch.empty(3, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()
    assert torch.empty is empty


def test_an_unwritten_output_element_is_caught():
    def forgetful(q, k, v):
        out = torch.empty_like(q)
        out[:, :, :-1] = _op("torch")(q, k, v)[:, :, :-1]  # last row never written
        return out

    with poison_allocations():
        reports = compare_with_oracle(forgetful, _op("reference"), _inputs(), grads=False)
    assert not reports[0].ok and math.isinf(reports[0].err)


class _Scaled(torch.nn.Module):
    """A one-layer module whose "torch" backend is off by ``error`` (relative): the module-
    level harness must pass it at 0 and fail it at 0.5%, on the output and the gradients."""

    def __init__(self, error: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 16))
        self.unused = torch.nn.Parameter(torch.randn(3))  # no gradient: compared as zeros
        self.backend, self.error = "reference", error

    def forward(self, x):
        y = x @ self.weight
        return y * (1 + self.error) if self.backend == "torch" else y


def test_module_harness_reports_inputs_and_every_parameter_and_fails_a_wrong_module():
    x = torch.randn(4, 16)
    reports = compare_module_with_oracle(_Scaled(0.0), (x,), backend="torch", names=("x",))
    assert [r.name for r in reports] == ["out", "dx", "grad weight", "grad unused"]
    assert_parity(reports)
    wrong = compare_module_with_oracle(_Scaled(0.005), (x,), backend="torch", names=("x",))
    assert [r.ok for r in wrong] == [False, False, False, True]
