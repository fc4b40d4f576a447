"""torch.compile(fullgraph=True) sees the op as one custom op: no graph break, forward and
backward, on every fast backend."""

import functools

import pytest
import torch

from mirasol import (ChunkedCausalSelfAttention, CrossModalAttention, TransformerCombiner,
                     TTMCombiner, chunked_causal_attention, cross_attention, masks, token_pool)
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


def _family_forms(backend):
    """(name, call, inputs) for each form of chunked_causal_attention: window and sinks,
    a cache prefill, packed segments, teacher forcing."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    op = functools.partial(chunked_causal_attention, backend=backend)
    cu_q = torch.tensor([0, 3, 3, 11], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 13, 24], dtype=torch.int32)
    return {
        "window_sinks": (lambda q, k, v: op(q, k, v, 4, window_chunks=2, sink_tokens=3,
                                            lengths=torch.tensor([14, 9])),
                         (rand(2, 4, 14, 16), rand(2, 2, 14, 16), rand(2, 2, 14, 16))),
        "prefill": (lambda q, k, v: op(q, k, v, 4, window_chunks=3, sink_tokens=2),
                    (rand(1, 2, 4, 16), rand(1, 2, 21, 16), rand(1, 2, 21, 16))),
        "packed": (lambda q, k, v: op(q, k, v, 5, window_chunks=2, sink_tokens=1,
                                      cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=8,
                                      max_seqlen_k=11),
                   (rand(11, 2, 16), rand(24, 1, 16), rand(24, 1, 16))),
        "teacher_forcing": (lambda q, k, v: op(q, k, v, 3, window_chunks=2, sink_tokens=2,
                                               teacher_forcing=True),
                            (rand(1, 2, 16, 16), rand(1, 2, 16, 16), rand(1, 2, 16, 16))),
    }


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fullgraph_compile_of_every_family_form(backend):
    for name, (call, inputs) in _family_forms(backend).items():
        torch._dynamo.reset()
        want = call(*inputs)
        got = torch.compile(call, fullgraph=True, backend="aot_eager")(*inputs)
        assert_identical(got, want)
        for g, w in zip(torch.autograd.grad(got.sum(), inputs),
                        torch.autograd.grad(want.sum(), inputs)):
            assert_identical(g, w)


class _Compilations:
    """A torch.compile backend that counts the graphs it is handed (each compile or
    recompile) and runs them eagerly."""

    def __init__(self):
        self.count = 0

    def __call__(self, graph, example_inputs):
        self.count += 1
        return graph.forward


def test_changing_lengths_and_sequence_lengths_does_not_recompile():
    # FlexAttention users rebuild a BlockMask, and recompile, when lengths change; mirasol's
    # masks are closed forms of runtime values. Measured: one graph for the padded calls
    # below (new lengths, new N) and one for the packed ones (new cu_seqlens and totals).
    torch._dynamo.reset()
    padded, packed = _Compilations(), _Compilations()

    def run_padded(q, k, v, lengths):
        return chunked_causal_attention(q, k, v, 4, window_chunks=2, sink_tokens=3,
                                        lengths=lengths, backend="torch")

    def run_packed(q, k, v, cu_q, cu_k):
        return chunked_causal_attention(q, k, v, 4, window_chunks=2, cu_seqlens_q=cu_q,
                                        cu_seqlens_k=cu_k, backend="torch")

    compiled = torch.compile(run_padded, backend=padded, dynamic=True, fullgraph=True)
    for n, lengths in ((12, [12, 5]), (12, [3, 9]), (20, [20, 17]), (33, [1, 33])):
        q, k, v = (torch.randn(2, 2, n, 16) for _ in range(3))
        lengths = torch.tensor(lengths)
        assert_identical(compiled(q, k, v, lengths), run_padded(q, k, v, lengths))
    compiled = torch.compile(run_packed, backend=packed, dynamic=True, fullgraph=True)
    for q_lens, k_lens in (((3, 5), (9, 5)), ((7, 1), (7, 7)), ((2, 4, 6), (20, 4, 9)),
                           ((1, 11, 6), (3, 12, 30))):
        q = torch.randn(sum(q_lens), 2, 16)
        k, v = (torch.randn(sum(k_lens), 2, 16) for _ in range(2))
        cu_q, cu_k = masks.cu_seqlens(q_lens), masks.cu_seqlens(k_lens)
        assert_identical(compiled(q, k, v, cu_q, cu_k), run_packed(q, k, v, cu_q, cu_k))
    assert (padded.count, packed.count) == (1, 1)
