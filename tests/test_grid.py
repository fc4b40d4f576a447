"""The launch grid: one flat axis (kernels/_program.py), so a launch of more than 65,535
segment x head programs (CUDA's limit on the y axis, the old layout's) is served.

Checked: the launchers' grids for such problems (meta tensors, no run), the in-kernel
decoding of a program id on real interpreter runs, and the one limit left (2^31 - 1
programs, CUDA's x axis) refused with a clear error. (A real run of 70,000 programs took
111 s in the interpreter here, 1.6 ms a program: too slow for the suite; on a GPU it is
one launch.)
"""

import pytest
import torch
import triton
import triton.language as tl

from mirasol.kernels._launch import KernelConfig, override_config
from mirasol.kernels._program import MAX_PROGRAMS, flat_grid, split_program
from mirasol.kernels.attention import (Segments, attn_bwd_delta_launch, attn_bwd_dkdv_launch,
                                       attn_bwd_dq_launch, attn_fwd_launch)
from mirasol.kernels.token_pool import token_pool_bwd_launch, token_pool_fwd_launch

MANY = 70_000  # past 65,535


@triton.jit
def _decode_kernel(OUT, INNER):
    block, outer = split_program(INNER)
    tl.store(OUT + tl.program_id(0) * 2, block)
    tl.store(OUT + tl.program_id(0) * 2 + 1, outer)


@pytest.mark.parametrize("inner,outer", [(3, 5), (1, 7), (6, 1)])
def test_program_ids_decode_to_every_block_of_every_item_once_in_order(inner, outer):
    """Programs of one item are consecutive (as blocks on x of a 2-D grid were), each
    (block, item) once."""
    (programs,) = flat_grid(inner, outer)
    out = torch.full((programs, 2), -1, dtype=torch.int32)
    _decode_kernel[(programs,)](out, inner)
    blocks, items = torch.meshgrid(torch.arange(inner), torch.arange(outer), indexing="xy")
    expected = torch.stack((blocks.flatten(), items.flatten()), 1).to(torch.int32)
    assert torch.equal(out, expected)


def _meta(*shape, dtype=torch.float16):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_attention_launches_past_65535_segment_heads():
    """A packed batch of 70,000 segments (e.g. the Transformer Combiner's chunks) x 2 heads,
    and a padded one: every kernel's grid is the flat product, none raises."""
    H, H_kv, D, max_q, max_k, total = 2, 1, 64, 40, 24, MANY * 8
    cu = _meta(MANY + 1, dtype=torch.int32)
    seg = Segments.cross(cu_seqlens_q=cu, cu_seqlens_k=cu, k_lengths=None,
                         max_seqlen_q=max_q, max_seqlen_k=max_k, causal=False)
    q, o, do, dq = (_meta(1, H, total, D) for _ in range(4))
    k, v, dk, dv = (_meta(1, H_kv, total, D) for _ in range(4))
    lse, delta = _meta(1, H, total, dtype=torch.float32), _meta(1, H, total,
                                                                 dtype=torch.float32)
    cfg = KernelConfig(16, 16, 1, 1)
    names = ("attn_fwd", "attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq")
    with override_config(names[0], cfg), override_config(names[1], cfg), \
            override_config(names[2], cfg), override_config(names[3], cfg):
        assert attn_fwd_launch(q, k, v, o, lse, seg, 0.1).grid == (3 * MANY * H,)
        assert attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg, 0.1).grid == (3 * MANY * H,)
        assert attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, seg,
                                    0.1).grid == (2 * MANY * H_kv,)
        assert attn_bwd_delta_launch(o, do, delta).grid == (triton.cdiv(total, 16) * H,)
        padded = Segments.chunked(20, 4)
        qp, kp = _meta(MANY, H, 20, D), _meta(MANY, H_kv, 20, D)
        assert attn_fwd_launch(qp, kp, kp, qp, _meta(MANY, H, 20, dtype=torch.float32),
                               padded, 0.1).grid == (2 * MANY * H,)


def test_token_pool_launches_past_65535_segments():
    D, M, N = 48, 8, 30
    x, logits = _meta(MANY, N, D), _meta(MANY, N, M)
    out, stats = _meta(MANY, M, D), _meta(MANY, 2, M, dtype=torch.float32)
    cfg = KernelConfig(16, 16, 1, 1)
    with override_config("token_pool_fwd", cfg), override_config("token_pool_bwd", cfg):
        assert token_pool_fwd_launch(x, logits, out, stats, None, None).grid == (3 * MANY,)
        assert token_pool_bwd_launch(x, logits, out, out, stats, x, logits, None, None,
                                     N).grid == (2 * MANY,)


def test_past_cudas_grid_limit_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=f"exceed CUDA's grid limit of {MAX_PROGRAMS}"):
        flat_grid(2**16, 2**15)
    assert flat_grid(2**16, 2**15 - 1) == (2**31 - 2**16,)
