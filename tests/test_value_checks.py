"""Index tensors (cu_seqlens, lengths) are read once per call, in the forward, in one host
transfer; the backward gets the segments' maxima from the forward and reads no index."""

import importlib

import pytest
import torch

from mirasol.ops import _checks, _op, cross_attention, cross_attention_padded, token_pool
from mirasol.ops._checks import Lengths, Packed, check_values

# The functionals shadow their modules' names in mirasol.ops.
cross_module = importlib.import_module("mirasol.ops.cross_attention")
pool_module = importlib.import_module("mirasol.ops.token_pool")

CU = torch.tensor([0, 3, 3, 10], dtype=torch.int32)


class Reads:
    """Counts check_values calls (of one op module and of the shared segment_maxima) and
    every Tensor.tolist of an int32 tensor (cu_seqlens) while active."""

    def __init__(self, monkeypatch, module):
        self.checks, self.cu_reads = 0, 0
        real_check, real_tolist = check_values, torch.Tensor.tolist

        def check(*args, **kwargs):
            self.checks += 1
            return real_check(*args, **kwargs)

        def tolist(t):
            self.cu_reads += t.dtype == torch.int32
            return real_tolist(t)

        for where in (module, _op):
            monkeypatch.setattr(where, "check_values", check)
        monkeypatch.setattr(torch.Tensor, "tolist", tolist)


def _packed_attention():
    q, k, v = (torch.randn(10, 2, 16, requires_grad=True) for _ in range(3))
    return q, k, v


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
@pytest.mark.parametrize("max_given", [True, False])
def test_cross_attention_checks_once_in_forward(backend, max_given, monkeypatch):
    q, k, v = _packed_attention()
    maxima = dict(max_seqlen_q=7, max_seqlen_k=8) if max_given else {}
    reads = Reads(monkeypatch, cross_module)
    out = cross_attention(q, k, v, cu_seqlens_q=CU, cu_seqlens_k=CU.clone(), **maxima,
                          backend=backend)
    assert reads.checks == 1
    before = reads.cu_reads
    out.sum().backward()
    assert reads.checks == 1
    if backend == "triton":  # the torch path walks the segments itself (see its docstring)
        assert reads.cu_reads == before


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cross_attention_padded_checks_once(backend, monkeypatch):
    q, k, v = (torch.randn(2, 2, 6, 16, requires_grad=True) for _ in range(3))
    reads = Reads(monkeypatch, cross_module)
    out = cross_attention_padded(q, k, v, k_lengths=torch.tensor([6, 2]), backend=backend)
    out.sum().backward()
    assert reads.checks == 1


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_token_pool_checks_once_in_forward(backend, monkeypatch):
    x, logits = torch.randn(10, 16, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    reads = Reads(monkeypatch, pool_module)
    out = token_pool(x, logits, cu_seqlens=CU, backend=backend)
    assert reads.checks == 1
    before = reads.cu_reads
    out.sum().backward()
    assert reads.checks == 1
    if backend == "triton":
        assert reads.cu_reads == before


def test_several_indices_are_read_in_one_transfer(monkeypatch):
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(t.shape) or real(t))
    bounds = check_values("op", Packed("cu_seqlens_q", CU, 10),
                          Packed("cu_seqlens_k", torch.tensor([0, 1, 5, 5], dtype=torch.int32),
                                 5, 4, "max_seqlen_k"),
                          Lengths("lengths", torch.tensor([2, 0]), 2))
    assert bounds == [7, 4, 2]
    assert calls == [torch.Size([10])]


def test_value_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"op: max_seqlen_k = 3 is shorter than the longest "
                                         r"segment \(4\)"):
        check_values("op", Packed("cu_seqlens_k", torch.tensor([0, 4], dtype=torch.int32), 4,
                                  3, "max_seqlen_k"))
    with pytest.raises(ValueError, match=r"op: lengths must lie in \[0, 2\] .*got \[3, 0\]"):
        check_values("op", Lengths("lengths", torch.tensor([3, 0]), 2))


def test_under_cuda_graph_capture_nothing_is_read(monkeypatch):
    monkeypatch.setattr(_checks, "_capturing", lambda t: True)
    bad = torch.tensor([0, 9, 2], dtype=torch.int32)
    assert check_values("op", Packed("cu_seqlens_q", bad, 4, 5, "max_seqlen_q"),
                        Lengths("lengths", torch.tensor([7]), 3)) == [5, 3]
    with pytest.raises(ValueError, match="max_seqlen_q must be given while a CUDA graph is "
                                         "being captured"):
        check_values("op", Packed("cu_seqlens_q", bad, 4, None, "max_seqlen_q"))
