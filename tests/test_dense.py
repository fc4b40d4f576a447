"""The torch backend's building block: fused CPU flash attention on CPU, a math version on
other devices. Both must agree with the dense reference (and so with each other); the math
one is exercised here on CPU because no other device is guaranteed in CI."""

import pytest
import torch

from mirasol import reference
from mirasol.ops import _dense
from mirasol.testing import assert_parity, compare_with_oracle

PATHS = {"fused-cpu": _dense._FUSED["cpu"], "math": _dense._MATH}


class _Piece(torch.autograd.Function):
    """Autograd around one forward/backward pair, so the harness can compare gradients."""

    @staticmethod
    def forward(ctx, q, k, v, path, scale, causal):
        fwd, bwd = PATHS[path]
        o, lse = fwd(q, k, v, scale, None, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.bwd, ctx.scale, ctx.causal = bwd, scale, causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.bwd(do, q, k, v, o, lse, ctx.scale, None, ctx.causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,keys", [(1, 1), (7, 33), (32, 5), (40, 40)])
@pytest.mark.parametrize("causal", [False, True], ids=["all", "token-causal"])
def test_piece_parity(path, dtype, rows, keys, causal):
    # causal: top-left (row i sees keys <= i), as the token-causal split calls it.
    q = torch.randn(2, 3, rows, 40, dtype=dtype)
    k, v = torch.randn(2, 2, 3, keys, 40, dtype=dtype).unbind(0)
    scale = 40 ** -0.5
    seen = torch.ones(rows, keys, dtype=torch.bool)
    seen = seen.tril() if causal else seen
    assert_parity(compare_with_oracle(
        lambda q, k, v: _Piece.apply(q, k, v, path, scale, causal),
        lambda q, k, v: reference.masked_attention(q, k, v, seen, scale),
        (q, k, v), names="qkv"))


def _reference_lse(q, k, scale, mask):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)


@pytest.mark.parametrize("masked", [False, True])
def test_grouped_heads_fold_into_rows(masked):
    # Each of the 3 query heads sharing a key/value head is stacked as extra rows: the
    # output and log-sum-exp of every head (and its mask rows) must land back in place.
    q, k, v = torch.randn(2, 6, 5, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.ones(5, 9, dtype=torch.bool).tril(4) if masked else None
    dense = torch.ones(5, 9, dtype=torch.bool) if mask is None else mask
    assert_parity(compare_with_oracle(
        lambda q, k, v: _dense.attention_lse(q, k, v, 0.25, mask)[0],
        lambda q, k, v: reference.masked_attention(q, k, v, dense, 0.25), (q, k, v),
        names="qkv", grads=False))
    assert_parity(compare_with_oracle(
        lambda q, k: _dense.attention_lse(q, k, v, 0.25, mask)[1],
        lambda q, k: _reference_lse(q, k, 0.25, dense), (q, k), names="qk", grads=False))
