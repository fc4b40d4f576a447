"""Dispatch: what auto picks, what an explicit request that cannot run says."""

import subprocess
import sys

import pytest
import torch

from mirasol.ops import BackendUnavailable, chunked_causal_attention
from mirasol.ops import chunked_attention as op_module
from mirasol.ops._backends import choose_backend


def _choose(requested, dtype=torch.float32, head_dim=64, device="cpu"):
    return choose_backend("op", requested, op_module.BACKENDS, torch.device(device), dtype,
                          head_dim)


def test_auto_picks_torch_on_cpu():
    assert _choose("auto") == "torch"


def test_triton_runs_on_cpu_under_the_interpreter():
    # conftest sets TRITON_INTERPRET=1 before the kernels are imported.
    assert _choose("triton") == "triton"


def test_bf16_under_the_interpreter_is_refused_with_the_reason():
    with pytest.raises(BackendUnavailable, match="interpreter computes bf16 tl.dot incorrectly"):
        _choose("triton", dtype=torch.bfloat16)
    assert _choose("torch", dtype=torch.bfloat16) == "torch"


def test_float64_is_refused_by_triton():
    with pytest.raises(BackendUnavailable, match=r"dtype torch.float64 is not supported"):
        _choose("triton", dtype=torch.float64)


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("MIRASOL_BACKEND", "reference")
    assert _choose("auto") == "reference"
    assert _choose("torch") == "torch"  # an explicit request wins over the environment
    monkeypatch.setenv("MIRASOL_BACKEND", "triton")
    with pytest.raises(BackendUnavailable):  # held to the explicit-request rule
        _choose("auto", dtype=torch.bfloat16)
    monkeypatch.setenv("MIRASOL_BACKEND", "fast")
    with pytest.raises(ValueError, match="MIRASOL_BACKEND must be one of"):
        _choose("auto")


def test_triton_without_the_interpreter_explains_how_to_run_on_cpu():
    code = ("import torch, mirasol\n"
            "q = torch.randn(1, 1, 4, 16)\n"
            "try:\n"
            "    mirasol.chunked_causal_attention(q, q, q, 2, backend='triton')\n"
            "except mirasol.BackendUnavailable as e:\n"
            "    print(e)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "set TRITON_INTERPRET=1 before mirasol.kernels is first imported" in out


def test_importing_mirasol_does_not_import_triton():
    code = "import sys, mirasol, mirasol.layers, mirasol.testing; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_every_backend_agrees_on_a_small_problem():
    q, k, v = torch.randn(3, 2, 2, 24, 16).unbind(0)
    outs = {b: chunked_causal_attention(q, k, v, 5, backend=b)
            for b in ("triton", "torch", "reference", "auto")}
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], msg=name)
