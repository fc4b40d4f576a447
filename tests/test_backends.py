"""Dispatch: what auto picks, what an explicit request that cannot run says, and that every
limit a backend declares is honoured both ways (auto routes around it, an explicit request
is refused naming the limit and the value)."""

import pickle
import subprocess
import sys
from dataclasses import replace
from functools import partial

import pytest
import torch

import mirasol
from mirasol.ops import OPS, BackendUnavailable, chunked_causal_attention, explain
from mirasol.ops import _backends
from mirasol.ops._backends import ELEMENTS, span
from mirasol.testing import assert_identical, assert_parity, compare_with_oracle

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
CUDA = torch.device("cuda")


def _inputs(op, *, size=16, dtype=F32, device="cpu", rows=8):
    """Arguments of a small call of ``op``: ``size`` is the head dim of the attention ops,
    the number of output tokens of token_pool; ``rows`` the tokens of each tensor."""
    def t(*shape, kind=dtype):
        if device == "meta":
            return torch.empty(shape, dtype=kind, device="meta")
        return torch.randn(shape).to(kind)

    if op == "token_pool":
        cu = torch.tensor([0, rows // 2, rows], dtype=torch.int32, device=device)
        return (t(rows, 8), t(rows, size)), dict(cu_seqlens=cu)
    if op == "cross_attention":
        cu = torch.tensor([0, rows // 2, rows], dtype=torch.int32, device=device)
        return ((t(rows, 2, size), t(rows, 1, size), t(rows, 1, size)),
                dict(cu_seqlens_q=cu, cu_seqlens_k=cu))
    q, k = t(2, 2, rows, size), t(2, 1, rows, size)
    if op == "cross_attention_padded":
        return (q, k, k.clone()), dict(k_lengths=torch.tensor([rows, 3], device=device))
    return (q, k, k.clone(), 3), dict(lengths=torch.tensor([rows, 5], device=device))


# Each declared size limit: how to exceed it, and the value the refusal must name.
# Meta tensors stand in where a real one would not fit in memory: the ops' argument checks
# and the decision run on them as on any tensor.
BIG_ROWS = 2**26 + 1  # x 32 head dims: just past 2^31 elements in one tensor
EXCEED = {
    "head dim": (dict(size=264), 264),
    "number of output tokens": (dict(size=65), 65),
    ELEMENTS.name: (dict(device="meta", rows=BIG_ROWS, size=32), None),
}
LIMITS = [(op, limit) for op in OPS for limit in OPS[op].backends["triton"].limits]


def _on_cuda(call, capability=(9, 0)):
    return replace(call, device=CUDA, capability=capability)


@pytest.fixture
def compiled(monkeypatch):
    """Triton as on a GPU machine (kernels compiled, not interpreted)."""
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", "compiled")


@pytest.fixture
def auto_tries_triton_on_cpu(monkeypatch):
    """auto prefers triton on every device, so on CPU (under the interpreter) it is the
    declarations alone that route a call away from it."""
    for op in OPS.values():
        monkeypatch.setitem(op.backends, "triton",
                            replace(op.backends["triton"], auto_devices=None))


def _refused(op, call, backend="triton"):
    with pytest.raises(BackendUnavailable) as info:
        OPS[op].choose(backend, call)
    return [(r.limit, r.value) for r in info.value.refusals]


def test_every_op_declares_the_kernel_limits():
    for op in OPS.values():
        names = {limit.name for limit in op.backends["triton"].limits}
        assert ELEMENTS.name in names and names <= set(EXCEED), (op.name, names)


@pytest.mark.parametrize("op,limit", LIMITS, ids=[f"{o}-{lim.name}" for o, lim in LIMITS])
def test_each_declared_limit_routes_auto_and_refuses_an_explicit_request(op, limit, compiled):
    exceed, value = EXCEED[limit.name]
    args, kwargs = _inputs(op, **exceed)
    call = _on_cuda(OPS[op].check(*args, **kwargs))
    value = value if value is not None else max(span(t) for t in args[:3])
    assert value > limit.maximum
    assert OPS[op].choose("auto", call) == "torch"
    assert _refused(op, call) == [(limit.name, value)]
    # Within every limit, on the same (pretend) GPU, auto takes the kernels.
    args, kwargs = _inputs(op)
    assert OPS[op].choose("auto", _on_cuda(OPS[op].check(*args, **kwargs))) == "triton"


@pytest.mark.parametrize("op", ["chunked_causal_attention", "token_pool"])
def test_a_size_limit_through_the_functional(op, auto_tries_triton_on_cpu):
    fn = getattr(mirasol, op)
    size = {"chunked_causal_attention": 264, "token_pool": 65}[op]
    args, kwargs = _inputs(op, size=size)
    with pytest.raises(BackendUnavailable) as info:
        fn(*args, **kwargs, backend="triton")
    (refusal,) = info.value.refusals
    assert refusal.value == size and refusal.limit in EXCEED
    assert explain(op, *args, **kwargs).chosen == "torch"
    assert_identical(fn(*args, **kwargs), fn(*args, **kwargs, backend="torch"))
    args, kwargs = _inputs(op)
    assert explain(op, *args, **kwargs).chosen == "triton"
    assert_identical(fn(*args, **kwargs), fn(*args, **kwargs, backend="triton"))


@pytest.mark.parametrize("op", sorted(OPS))
def test_dtype_limits(op, compiled):
    args, kwargs = _inputs(op, dtype=F64)
    call = _on_cuda(OPS[op].check(*args, **kwargs))
    assert OPS[op].choose("auto", call) == "torch"
    assert _refused(op, call) == [("dtype", F64)]


@pytest.mark.parametrize("op", sorted(OPS))
def test_bf16_is_refused_under_the_interpreter_with_the_reason(op, auto_tries_triton_on_cpu,
                                                               monkeypatch):
    args, kwargs = _inputs(op, dtype=BF16)
    call = OPS[op].check(*args, **kwargs)
    assert OPS[op].choose("auto", call) == "torch"
    with pytest.raises(BackendUnavailable, match="interpreter computes bf16 tl.dot incorrectly"):
        OPS[op].choose("triton", call)
    assert _refused(op, call) == [("dtype", BF16)]
    # On a GPU the kernels take bf16.
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", "compiled")
    assert OPS[op].choose("triton", _on_cuda(call)) == "triton"


@pytest.mark.parametrize("op", sorted(OPS))
def test_compute_capability_limit(op, compiled):
    args, kwargs = _inputs(op)
    call = _on_cuda(OPS[op].check(*args, **kwargs), capability=(7, 5))
    assert OPS[op].choose("auto", call) == "torch"
    assert _refused(op, call) == [("compute capability", (7, 5))]
    assert OPS[op].choose("triton", _on_cuda(call, (8, 0))) == "triton"


@pytest.mark.parametrize("op", sorted(OPS))
def test_device_limits(op, monkeypatch):
    args, kwargs = _inputs(op)
    call = OPS[op].check(*args, **kwargs)
    # Under the interpreter the kernels run on CPU tensors only ...
    assert _refused(op, _on_cuda(call)) == [("device", "cuda")]
    assert OPS[op].choose("auto", _on_cuda(call)) == "torch"
    # ... compiled, on CUDA only.
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", "compiled")
    assert _refused(op, call) == [("device", "cpu")]
    assert OPS[op].choose("auto", call) == "torch"


@pytest.mark.parametrize("op", sorted(OPS))
def test_triton_not_installed(op, monkeypatch):
    monkeypatch.setitem(_backends._TRITON_STATE, "mode", None)
    args, kwargs = _inputs(op)
    call = _on_cuda(OPS[op].check(*args, **kwargs))
    assert OPS[op].choose("auto", call) == "torch"
    with pytest.raises(BackendUnavailable, match="triton is not installed"):
        OPS[op].choose("triton", call)


def test_every_reason_is_listed_and_carried_as_data():
    args, kwargs = _inputs("chunked_causal_attention", size=264, dtype=F64)
    with pytest.raises(BackendUnavailable) as info:
        chunked_causal_attention(*args, **kwargs, backend="triton")
    e = info.value
    assert (e.op, e.backend) == ("chunked_causal_attention", "triton")
    assert [(r.limit, r.value) for r in e.refusals] == [("dtype", F64), ("head dim", 264)]
    assert e.reason == "; ".join(r.message for r in e.refusals)
    assert str(e) == ("chunked_causal_attention: backend='triton' cannot run this call: "
                      + e.reason)
    again = pickle.loads(pickle.dumps(e))
    assert again.refusals == e.refusals and str(again) == str(e)


def test_explain_names_the_pick_and_every_refusal():
    args, kwargs = _inputs("chunked_causal_attention", size=264, dtype=BF16)
    report = explain(chunked_causal_attention, *args, **kwargs)
    assert report.op == "chunked_causal_attention" and report.chosen == "torch"
    assert [r.limit for r in report.refusals["triton"]] == ["dtype", "head dim"]
    assert report.refusals["torch"] == () and report.refusals["reference"] == ()
    text = str(report)
    assert "backend='auto' runs on torch" in text
    assert "head dim 264 exceeds the maximum of 256" in text and "bf16 tl.dot" in text
    assert "auto never picks it" in text
    # An explicit request that cannot run is reported, not raised.
    refused = explain("chunked_causal_attention", *args, **kwargs, backend="triton")
    assert refused.chosen is None and "raises BackendUnavailable" in str(refused)
    args, kwargs = _inputs("chunked_causal_attention")
    assert "auto picks it on cuda only" in str(explain("chunked_causal_attention", *args,
                                                       **kwargs))


def test_explain_checks_arguments_but_reads_no_values():
    args, kwargs = _inputs("cross_attention")
    kwargs["cu_seqlens_k"] = torch.tensor([0, 9, 2], dtype=torch.int32)  # invalid values
    assert explain("cross_attention", *args, **kwargs).chosen == "torch"
    with pytest.raises(ValueError, match="cu_seqlens_k must start at 0"):
        mirasol.cross_attention(*args, **kwargs)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32"):
        explain("cross_attention", *args,
                **{**kwargs, "cu_seqlens_q": kwargs["cu_seqlens_q"].long()})
    with pytest.raises(ValueError, match="unknown op 'attention'"):
        explain("attention")


def test_span_counts_the_addressed_elements_of_a_view():
    qkv = torch.empty(2, 3, 8, 48)
    assert span(qkv) == qkv.numel() and span(qkv[..., :16]) == qkv.numel() - 32
    assert span(qkv.transpose(1, 2)) == qkv.numel() and span(qkv[:0]) == 0


def test_auto_picks_torch_on_cpu():
    args, kwargs = _inputs("chunked_causal_attention")
    assert explain("chunked_causal_attention", *args, **kwargs).chosen == "torch"


def test_environment_overrides_auto(monkeypatch):
    args, kwargs = _inputs("chunked_causal_attention")
    call = OPS["chunked_causal_attention"].check(*args, **kwargs)
    choose = OPS["chunked_causal_attention"].choose
    monkeypatch.setenv("MIRASOL_BACKEND", "reference")
    assert choose("auto", call) == "reference"
    assert choose("torch", call) == "torch"  # an explicit request wins over the environment
    monkeypatch.setenv("MIRASOL_BACKEND", "triton")
    with pytest.raises(BackendUnavailable):  # held to the explicit-request rule
        choose("auto", replace(call, dtype=BF16))
    monkeypatch.setenv("MIRASOL_BACKEND", "fast")
    with pytest.raises(ValueError, match="MIRASOL_BACKEND must be one of"):
        choose("auto", call)


def test_triton_without_the_interpreter_explains_how_to_run_on_cpu():
    code = ("import torch, mirasol\n"
            "q = torch.randn(1, 1, 4, 16)\n"
            "try:\n"
            "    mirasol.chunked_causal_attention(q, q, q, 2, backend='triton')\n"
            "except mirasol.BackendUnavailable as e:\n"
            "    print([(r.limit, r.value) for r in e.refusals])\n"
            "    print(e)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "[('device', 'cpu')]" in out
    assert "set TRITON_INTERPRET=1 before mirasol.kernels is first imported" in out


def test_importing_mirasol_does_not_import_triton():
    code = "import sys, mirasol, mirasol.layers, mirasol.testing; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_every_backend_agrees_on_a_small_problem():
    q, k, v = torch.randn(3, 2, 2, 24, 16).unbind(0)
    op = partial(chunked_causal_attention, chunk_size=5)
    # auto is the torch backend here: the same path, so the same bits.
    assert_identical(op(q, k, v), op(q, k, v, backend="torch"))
    for backend in ("triton", "torch"):
        assert_parity(compare_with_oracle(partial(op, backend=backend),
                                          partial(op, backend="reference"), (q, k, v),
                                          names="qkv"))
