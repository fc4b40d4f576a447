"""`mirasol check`: on CUDA a triton row skipped in a dtype the kernels declare fails the
run (a GPU suite must not pass without testing triton); elsewhere a skip is listed."""

import pytest
import torch

from mirasol.ops import _backends
from mirasol.testing import check

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def built_on_cpu(monkeypatch):
    """Every case's tensors on CPU whatever device the row names: the row's logic runs as
    on a GPU machine, the tensors need none."""
    for op, (fn, build, cases) in list(check.CHECKS.items()):
        monkeypatch.setitem(check.CHECKS, op,
                            (fn, lambda case, device, build=build: build(case, "cpu"), cases))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_on_cuda_a_skipped_triton_row_fails(dtype, built_on_cpu, monkeypatch):
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", None)  # say, triton missing
    row = check.check_row("token_pool", "triton", dtype, CUDA)
    assert row.skipped == "triton is not installed" and row.required and not row.ok
    assert "FAIL: skipped (triton is not installed)" in check.format_check([row])


def test_a_skip_in_a_dtype_the_kernels_do_not_declare_is_not_a_failure(built_on_cpu,
                                                                      monkeypatch):
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", "compiled")
    row = check.check_row("cross_attention", "triton", torch.float64, CUDA)
    assert row.skipped.startswith("device type 'cpu' is not supported")
    assert "dtype torch.float64 is not supported" in row.skipped
    assert not row.required and row.ok


def test_off_cuda_a_skip_is_listed_not_failed():
    row = check.check_row("chunked_causal_attention", "triton", torch.bfloat16, CPU)
    assert row.skipped.startswith("the Triton interpreter computes bf16 tl.dot incorrectly")
    assert row.ok and not row.required and row.cases == 0
    assert "skipped: the Triton interpreter" in check.format_check([row])


def test_only_the_kernels_on_cuda_are_required():
    assert check._required("token_pool", "triton", torch.bfloat16, CUDA)
    assert not check._required("token_pool", "triton", torch.float64, CUDA)
    assert not check._required("token_pool", "torch", torch.float16, CUDA)
    assert not check._required("token_pool", "triton", torch.float16, CPU)
