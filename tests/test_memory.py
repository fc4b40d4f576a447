"""The torch backend never materializes an N x N mask or score tensor (the point of a
chunked composite): its largest tensor is one masked piece's mask, at most
``_pieces.MASKED_ELEMENTS``, here made a quarter of N x N so that the planner must cut the
problem (its cost model would run N = 512 as one masked call). The dense reference does
materialize one, which shows the probe sees such tensors.

The probe watches the backend's forward and backward directly: through the public op it
would only see the custom op's outputs (a dispatch mode does not look inside custom ops)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mirasol import reference
from mirasol.masks import Rule
from mirasol.ops import _pieces, chunked_attention


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


B, H, N, D, C = 1, 2, 512, 16, 64


# The family's masks too: a window with sinks (the gathered keys of a row span) and
# teacher forcing (its clean keys summed over two row spans).
RULES = [Rule(C), Rule(C, window=2, sinks=40), Rule(C, window=3, sinks=8, teacher_forcing=True)]


@pytest.fixture
def quarter_budget(monkeypatch):
    monkeypatch.setattr(_pieces, "MASKED_ELEMENTS", N * N // 4)
    _pieces.plan.cache_clear()
    yield N * N // 4
    _pieces.plan.cache_clear()


@pytest.mark.parametrize("rule", RULES, ids=["chunked", "window_sinks", "teacher_forcing"])
@pytest.mark.parametrize("lengths", [None, torch.tensor([300])])
def test_torch_backend_has_no_n_by_n_tensor(lengths, rule, quarter_budget):
    if rule.teacher_forcing and lengths is not None:
        pytest.skip("teacher forcing takes no lengths")
    q, k, v, do = torch.randn(4, B, H, N, D).unbind(0)
    with LargestTensor() as probe:
        out, lse = chunked_attention._torch_fwd(q, k, v, lengths, None, None, rule, D**-0.5)
        chunked_attention._torch_bwd(do, q, k, v, out, lse, lengths, None, None, rule,
                                     D**-0.5)
    assert probe.numel <= quarter_budget, probe.numel


def test_the_probe_sees_the_dense_reference_scores():
    q, k, v = (torch.randn(B, H, N, D, requires_grad=True) for _ in range(3))
    with LargestTensor() as probe:
        reference.chunked_causal_attention(q, k, v, C).sum().backward()
    assert probe.numel >= N * N
