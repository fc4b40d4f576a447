"""torch.compile(fullgraph=True) sees the op as one custom op: no graph break, forward and
backward, on every fast backend."""

import pytest
import torch

from mirasol import (ChunkedCausalSelfAttention, CrossModalAttention, TransformerCombiner,
                     TTMCombiner, cross_attention, token_pool)
from mirasol.testing import assert_identical, tolerances


def _agree(got, want, compiler):
    """aot_eager runs the eager kernels in the eager order: the same bits. Inductor fuses
    the projections its own way: equal up to the tolerance table's fp32 floor."""
    if compiler == "aot_eager":
        assert_identical(got, want)
    else:
        floor = tolerances.floor(want.dtype, tolerances.magnitude(want))
        torch.testing.assert_close(got, want, rtol=0, atol=floor)


@pytest.mark.parametrize("backend,compiler", [("torch", "inductor"), ("triton", "aot_eager")])
def test_fullgraph_compile_of_a_model_using_the_layer(backend, compiler):
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 32),
        ChunkedCausalSelfAttention(32, num_heads=2, chunk_size=3, rope=True, backend=backend),
    )
    x = torch.randn(2, 11, 32, requires_grad=True)
    lengths = torch.tensor([11, 6])

    def run(t):
        return model[1](model[0](t), lengths=lengths)

    want = run(x)
    got = torch.compile(run, fullgraph=True, backend=compiler)(x)
    _agree(got, want, compiler)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(want.sum(), x)
    _agree(gx, wx, compiler)


def test_graph_has_no_breaks():
    torch._dynamo.reset()
    layer = ChunkedCausalSelfAttention(32, num_heads=2, chunk_size=4)
    explanation = torch._dynamo.explain(layer)(torch.randn(1, 9, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fullgraph_compile_of_cross_attention_packed_and_padded(backend):
    torch._dynamo.reset()
    layer = CrossModalAttention(32, 16, num_heads=4, num_kv_heads=2, backend=backend)
    x, ctx = torch.randn(2, 5, 32, requires_grad=True), torch.randn(2, 9, 16)
    lengths = torch.tensor([9, 4])
    cu_q = torch.tensor([0, 5, 10], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 13], dtype=torch.int32)
    ctx_packed = torch.cat([ctx[0], ctx[1, :4]])

    def run(t):
        padded = layer(t, ctx, context_lengths=lengths)
        packed = layer(t.flatten(0, 1), ctx_packed, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                       max_seqlen_q=5, max_seqlen_k=9)
        return padded.flatten(0, 1) + packed

    want = run(x)
    got = torch.compile(run, fullgraph=True, backend="aot_eager")(x)
    assert_identical(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(want.sum(), x)
    assert_identical(gx, wx)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fullgraph_compile_of_the_combiners(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    transformer = TransformerCombiner(32, num_tokens=4, num_heads=2, backend=backend)
    ttm = TTMCombiner(32, num_tokens=4, memory_size=8, depth=1, num_heads=2, backend=backend)
    video, audio = torch.randn(2, 3, 10, 32, requires_grad=True), torch.randn(2, 3, 6, 32)

    def run(v):
        return transformer(v, audio).sum() + ttm(v, audio).sum()

    want = run(video)
    got = torch.compile(run, fullgraph=True, backend="aot_eager")(video)
    assert_identical(got, want)
    (gv,) = torch.autograd.grad(got, video)
    (wv,) = torch.autograd.grad(want, video)
    assert_identical(gv, wv)


@pytest.mark.parametrize("max_given", [True, False])
def test_fullgraph_compile_of_the_packed_ops(max_given):
    """The segments' values are read inside the forward custom op (no graph break even
    without max_seqlen_*), and the backward gets the maxima from the forward."""
    torch._dynamo.reset()
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    cu_k = cu.clone()  # one tensor passed twice to an autograd.Function breaks the graph
    maxima = dict(max_seqlen_q=7, max_seqlen_k=7) if max_given else {}
    q, k, v = (torch.randn(10, 2, 16, requires_grad=True) for _ in range(3))
    x, logits = torch.randn(10, 16, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    inputs = (q, k, v, x, logits)

    def run(q, k, v, x, logits):
        out = cross_attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu_k, **maxima,
                              backend="triton")
        return out.square().sum() + token_pool(x, logits, cu_seqlens=cu,
                                               backend="triton").square().sum()

    explanation = torch._dynamo.explain(run)(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    want = run(*inputs)
    got = torch.compile(run, fullgraph=True, backend="aot_eager")(*inputs)
    assert_identical(got, want)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        assert_identical(g, w)
