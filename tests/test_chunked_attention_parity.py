"""Forward and gradient parity of the fast backends against the float64 oracle
(DESIGN.md §5): err(fast) <= 2x (3x for grads) err(reference in the same dtype) + floor."""

import contextlib
from functools import partial
from unittest import mock

import pytest
import torch
from hypothesis import example, given, settings

from mirasol import reference
from mirasol.kernels import KernelConfig
from mirasol.kernels._launch import override_config
from mirasol.kernels.attention import force_key_splits, split_count
from mirasol.ops import chunked_causal_attention
from mirasol.testing import assert_parity, compare_with_oracle
from mirasol.testing.strategies import (AttentionCase, CrossAttentionCase, PackedChunkedCase,
                                        attention_cases, family_cases, packed_family_cases)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _case(B=1, H=2, H_kv=2, N=16, D=32, chunk=4, lengths=None, dtype=F32, layout="contiguous"):
    return AttentionCase(B, H, H_kv, N, D, chunk, lengths, dtype, layout, seed=1234)


# Edges pinned for every backend: one token, lengths that are not multiples of the chunk or
# of the interpreter's 16-wide tiles, a sequence one past a tile, a single chunk, one token
# per chunk, empty samples, grouped-query heads, non-power-of-two head dims, the largest
# head dim, strided layouts.
EDGES = [
    _case(N=1, chunk=1),
    _case(N=17, chunk=16, D=40),
    _case(N=33, chunk=5, D=80, dtype=F16),
    _case(N=48, chunk=48, D=96),
    _case(N=31, chunk=1, D=24),
    _case(B=3, N=40, chunk=7, lengths=(40, 0, 23), D=112),
    _case(B=2, H=4, H_kv=1, N=29, chunk=6, D=64, dtype=F16, layout="bnhd"),
    _case(N=20, chunk=3, D=256, layout="padded"),
    _case(B=2, H=4, H_kv=2, N=50, chunk=100, lengths=(1, 50), D=16, dtype=F16),
]


def _check(case: AttentionCase, backend: str):
    q, k, v, lengths = case.tensors()
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size, lengths=lengths,
                 **case.mask_args)
    reports = compare_with_oracle(
        partial(op, backend=backend), partial(op, backend="reference"), (q, k, v),
        names=("q", "k", "v"), seed=case.seed)
    assert_parity(reports)


def _with_edges(edges):
    def pin(test):
        for edge in edges:
            test = example(case=edge)(test)
        return test
    return pin


@pytest.mark.parametrize("backend", ["triton", "torch"])
@given(case=attention_cases())
@_with_edges(EDGES)
def test_parity_forward_and_gradients(backend, case):
    _check(case, backend)


@given(case=attention_cases(dtypes=(torch.float64,), max_seqlen=40))
def test_torch_backend_float64(case):
    # float64 in, float64 accumulation: parity at float64's own precision.
    _check(case, "torch")


def test_reference_is_the_equation():
    # The oracle itself, against the formula written out by hand on a tiny problem.
    q, k, v = torch.randn(3, 1, 1, 5, 4, dtype=torch.float64).unbind(0)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    scores = (q[0, 0] @ k[0, 0].T) / 2.0
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v[0, 0]
    got = reference.chunked_causal_attention(q, k, v, 2)
    torch.testing.assert_close(got[0, 0], expected)


# The interpreter runs 16x16 tiles by default; GPU configs have block_m != block_n. The
# loop bounds (visible key range, first query block of a key block) depend on both, so
# run the triton backend with unequal tiles too.
TILE_SHAPES = {
    "tall": dict(attn_fwd=KernelConfig(32, 16), attn_bwd_dkdv=KernelConfig(16, 32),
                 attn_bwd_dq=KernelConfig(32, 16)),
    "wide": dict(attn_fwd=KernelConfig(16, 32), attn_bwd_dkdv=KernelConfig(32, 16),
                 attn_bwd_dq=KernelConfig(16, 32)),
}


@pytest.mark.parametrize("tiles", TILE_SHAPES)
@settings(max_examples=12)
@given(case=attention_cases(dtypes=(F32,), head_dims=(16, 40, 64)))
@example(case=_case(B=2, N=70, chunk=24, lengths=(70, 47)))
@example(case=_case(N=33, chunk=16))
def test_parity_with_unequal_tiles(tiles, case):
    with contextlib.ExitStack() as stack:
        for name, config in TILE_SHAPES[tiles].items():
            stack.enter_context(override_config(name, config))
        _check(case, "triton")


# ------------------------------------------------------------- the block-causal family


def _family(N=24, chunk=5, window=None, sinks=0, k_seqlen=None, tf=False, B=1, H=2, H_kv=1,
            D=16, lengths=None, dtype=F32):
    return AttentionCase(B, H, H_kv, N, D, chunk, lengths, dtype, "contiguous", seed=99,
                         k_seqlen=k_seqlen, window=window, sinks=sinks, teacher_forcing=tf)


# The family's edges (issue 19): window 1, a window past the number of chunks, sinks inside
# the first chunk and spanning chunks, one query and a chunk of queries against a longer
# cached prefix, q_len = k_len, a chunk that divides neither N nor the 16-row tile, teacher
# forcing with one chunk and with several, lengths under a window.
FAMILY_EDGES = [
    _family(N=37, chunk=5, window=1),
    _family(N=20, chunk=3, window=9),
    _family(N=40, chunk=7, window=2, sinks=3),
    _family(N=45, chunk=4, window=2, sinks=13, H=4, H_kv=2),
    _family(N=1, chunk=4, window=2, sinks=5, k_seqlen=43),
    _family(N=11, chunk=6, window=3, sinks=2, k_seqlen=50, dtype=F16),
    _family(N=34, chunk=34, tf=True),
    _family(N=44, chunk=5, window=2, sinks=6, tf=True),
    _family(N=30, chunk=4, window=3, sinks=0, tf=True, dtype=F16),
    _family(N=33, chunk=5, window=2, sinks=4, B=2, lengths=(33, 12)),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@settings(max_examples=15)
@given(case=family_cases())
@_with_edges(FAMILY_EDGES)
def test_family_parity(backend, case):
    _check(case, backend)


def _check_packed(case: PackedChunkedCase, backend: str):
    q, k, v, cu_q, cu_k = case.segments.packed()
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size, cu_seqlens_q=cu_q,
                 cu_seqlens_k=cu_k, **case.mask_args)
    assert_parity(compare_with_oracle(
        partial(op, backend=backend), partial(op, backend="reference"), (q, k, v),
        names=("q", "k", "v"), seed=case.segments.seed))


def _packed(q_lens, k_lens, chunk, window=None, sinks=0, H=2, H_kv=1, D=16, dtype=F32):
    return PackedChunkedCase(CrossAttentionCase(q_lens, k_lens, H, H_kv, D, False, dtype, 7),
                             chunk, window, sinks)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@settings(max_examples=12)
@given(case=packed_family_cases(max_len=30))
@example(case=_packed((5, 0, 13, 3), (14, 7, 20, 3), 5, window=2, sinks=3))  # empty segments
@example(case=_packed((0, 17), (0, 17), 4))  # an empty batch entry first; q_len = k_len
@example(case=_packed((1, 2), (33, 2), 6, window=1, sinks=7, dtype=F16))  # one-query prefill
def test_packed_family_parity(backend, case):
    _check_packed(case, backend)


# ------------------------------------------- the torch backend's groupings (its plans)


@contextlib.contextmanager
def _grouped(g):
    """The torch backend's planner made to group every segment's row spans ``g`` at a time
    (None: all of them; "split": the token-causal split where it may serve): each plan the
    cost model may choose, whatever it would choose."""
    from mirasol.ops import _pieces

    def plan(q_len, k_len, rule, work, head_dim, dtype, backward, measured,
             token_causal=False):
        if g == "split" and token_causal:  # else (fp32 d > 255 backward) per row span
            return (_pieces.TokenCausalSplit(q_len, rule.chunk),)
        count = len(_pieces.row_spans(q_len, k_len, rule))
        size = {None: max(1, count), "split": 1}.get(g, g)
        return _pieces.superblocks(q_len, k_len, rule, size)

    with mock.patch.object(_pieces, "plan", plan):
        yield


@pytest.mark.parametrize("g", [1, 2, 3, None], ids=["per-span", "pairs", "threes", "all"])
@settings(max_examples=10)
@given(case=family_cases(dtypes=(F32, F16, BF16)))
@_with_edges(FAMILY_EDGES)
def test_every_grouping_of_the_torch_backend_has_parity(g, case):
    # One unmasked call per row span, superblocks (an unmasked prefix merged with a masked
    # rest by their LSEs) or one masked call: each meets the parity rule, forward and
    # backward, over windows, sinks, cache prefills, lengths and teacher forcing; bf16
    # computed natively (merged in fp32), fp16 in fp32.
    with _grouped(g):
        _check(case, "torch")


def _splittable(case: AttentionCase) -> bool:
    # Where the planner may take the token-causal split: no window or teacher forcing, as
    # many queries as keys, whole heads, no NaN (none drawn here).
    return (case.window is None and not case.teacher_forcing and case.k_seqlen is None
            and case.heads == case.kv_heads)


@settings(max_examples=25)
@given(case=attention_cases(max_seqlen=70, dtypes=(F32, F16, BF16)).filter(_splittable))
@example(case=_case(N=1, chunk=1))
@example(case=_case(N=17, chunk=16, D=40))  # a shorter last chunk
@example(case=_case(N=33, chunk=5, D=80, dtype=F16))
@example(case=_case(B=3, N=40, chunk=7, lengths=(40, 0, 23), D=112))
@example(case=_case(N=20, chunk=3, D=256, layout="padded"))  # fp32 d256: split forward only
@example(case=_case(N=31, chunk=1, D=24))  # one token per chunk: token-causal itself
def test_the_token_causal_split_has_parity(case):
    # Token-causal attention over the keys before each row, merged with each chunk's rows
    # against its own keys from their position on.
    with _grouped("split"):
        _check(case, "torch")


@pytest.mark.parametrize("g", [2, None], ids=["pairs", "all"])
@example(case=_packed((5, 0, 13, 3), (14, 7, 20, 3), 5, window=2, sinks=3))
@example(case=_packed((1, 2), (33, 2), 6, window=1, sinks=7, dtype=F16))
@settings(max_examples=6)
@given(case=packed_family_cases(max_len=30))
def test_every_grouping_of_the_torch_backend_packed(g, case):
    with _grouped(g):
        _check_packed(case, "torch")


# ------------------------------------------------------------- the split-KV forward


@pytest.mark.parametrize("splits", [2, 3])
@settings(max_examples=8)
@given(case=family_cases(head_dims=(16, 40, 64)))
@example(case=_family(N=4, chunk=4, k_seqlen=70))  # a decode step against a long prefix
@example(case=_family(N=8, chunk=4, window=3, sinks=5, k_seqlen=70))  # sinks in split 0 only
@example(case=_family(N=24, chunk=5, window=2, sinks=3, tf=True))
def test_split_kv_forward_parity(splits, case):
    # Each split's partial (o, lse) over its keys, merged by their log-sum-exps: the parity
    # rule still holds, gradients included (the backward reads the merged o and lse).
    with force_key_splits(splits):
        _check(case, "triton")


@pytest.mark.parametrize("splits", [2, 3])
def test_split_kv_forward_packed(splits):
    with force_key_splits(splits):
        _check_packed(_packed((5, 0, 13, 3), (40, 7, 20, 3), 6, window=2, sinks=3), "triton")


def test_split_count_fills_the_gpu_only_where_it_is_needed():
    # H200: 132 SMs; the tuned forward's 64-key blocks (sm90 half, head dim 128).
    # Mirasol's decode shape, 32 queries x 16 heads against 4,096 keys: 16 programs.
    assert split_count(programs=16, sms=132, max_k=4096, block_n=64) == 16
    # A Wan chunk against its cache, 4,680 queries x 12 heads (37 blocks of 128): full.
    assert split_count(programs=37 * 12, sms=132, max_k=32760, block_n=64) == 1
    # Few keys: no split shorter than 4 blocks.
    assert split_count(programs=1, sms=132, max_k=300, block_n=64) == 1
    assert split_count(programs=1, sms=132, max_k=512, block_n=64) == 2
