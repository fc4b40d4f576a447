"""torch.compile(fullgraph=True) sees the op as one custom op: no graph break, forward and
backward, on every fast backend."""

import pytest
import torch

from mirasol import ChunkedCausalSelfAttention


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
    # Inductor may fuse the projections differently: fp32 rounding, not a semantic change.
    torch.testing.assert_close(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, wx)


def test_graph_has_no_breaks():
    torch._dynamo.reset()
    layer = ChunkedCausalSelfAttention(32, num_heads=2, chunk_size=4)
    explanation = torch._dynamo.explain(layer)(torch.randn(1, 9, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
