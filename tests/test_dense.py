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
    def forward(ctx, q, k, v, path, scale):
        fwd, bwd = PATHS[path]
        o, lse = fwd(q, k, v, scale, None)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.bwd, ctx.scale = bwd, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.bwd(do, q, k, v, o, lse, ctx.scale, None)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,keys", [(1, 1), (7, 33), (32, 5)])
def test_piece_parity(path, dtype, rows, keys):
    q = torch.randn(2, 3, rows, 40, dtype=dtype)
    k, v = torch.randn(2, 2, 3, keys, 40, dtype=dtype).unbind(0)
    scale = 40 ** -0.5
    everything = torch.ones(rows, keys, dtype=torch.bool)
    assert_parity(compare_with_oracle(
        lambda q, k, v: _Piece.apply(q, k, v, path, scale),
        lambda q, k, v: reference.masked_attention(q, k, v, everything, scale),
        (q, k, v), names="qkv"))


def test_grouped_heads_fold_into_rows():
    q, k, v = torch.randn(2, 6, 5, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    o, lse = _dense.attention_lse(q, k, v, 0.25)
    want = reference.masked_attention(q, k, v, torch.ones(5, 9, dtype=torch.bool), 0.25)
    torch.testing.assert_close(o, want)
    assert lse.shape == (2, 6, 5)
