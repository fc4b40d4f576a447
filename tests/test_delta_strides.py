"""The attention backward reads each of its tensors through that tensor's own strides:
DELTA laid out unlike the LSE (here transposed in memory) gives the same gradients."""

import torch

from mirasol.kernels.attention import (Segments, attn_bwd_delta_launch, attn_bwd_dkdv_launch,
                                       attn_bwd_dq_launch, attn_fwd)
from mirasol.testing import assert_identical


def test_delta_is_read_with_its_own_strides():
    gen = torch.Generator().manual_seed(0)
    B, H, H_kv, N, D = 2, 2, 1, 37, 16
    q, do = (torch.randn(B, H, N, D, generator=gen) for _ in range(2))
    k, v = (torch.randn(B, H_kv, N, D, generator=gen) for _ in range(2))
    seg = Segments.chunked(N, 8, torch.tensor([37, 21]))
    o, lse = attn_fwd(q, k, v, seg, 0.25)
    delta = torch.empty(lse.shape)
    attn_bwd_delta_launch(o, do, delta).run()
    strided = torch.empty(B, N, H).transpose(1, 2).copy_(delta)  # (B, H, N), n fastest no more
    assert strided.stride() != lse.stride()

    def grads(d):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        attn_bwd_dkdv_launch(q, k, v, do, lse, d, dk, dv, seg, 0.25).run()
        attn_bwd_dq_launch(q, k, v, do, lse, d, dq, seg, 0.25).run()
        return dq, dk, dv

    for got, expected in zip(grads(strided), grads(delta)):
        assert_identical(got, expected)
