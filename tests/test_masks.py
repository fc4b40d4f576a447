"""mirasol.masks, the one definition of each mask, held against everything that computes it:

* outside definitions of the semantics: token-causal and full attention at the extreme chunk
  sizes, xformers' block-diagonal ``attn_bias`` masks, a padded batch as its samples alone;
* FlexAttention: the BlockMask that ``create_block_mask`` builds from the mask_mod, block by
  block (partial and full), and ``flex_attention`` itself (eager and compiled forward);
* every backend of the ops (triton through the interpreter, torch, reference), by probing
  the visibility pattern they compute. With q = 0 every visible score is equal, so a row's
  weights are uniform over the keys it sees; with v = identity (head dim >= keys) the
  output is the weights themselves: out[i, j] = 1 / |visible(i)| exactly where j is
  visible, 0 elsewhere. Backward, do = identity over the query rows makes dv[j, i] the
  weight of key j in row i (summed over the query heads sharing a key head), recomputed
  from the saved log-sum-exp (exp(-log n) is 1/n only to rounding, so the backward probe
  compares where dv is nonzero): the dK/dV kernel's loop bounds. (dQ cannot be probed so:
  a row with one key has a constant softmax, whose gradient is 0 whatever the mask.)
"""

import dataclasses
from functools import partial

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import flex_attention

from mirasol import masks
from mirasol.ops import chunked_causal_attention, cross_attention, cross_attention_padded
from mirasol.reference import masked_attention
from mirasol.testing import assert_identical, assert_parity, compare_with_oracle
from mirasol.testing.strategies import (AttentionCase, CrossAttentionCase, PackedChunkedCase,
                                        attention_cases, cross_attention_cases, family_cases,
                                        packed_family_cases)

BACKENDS = pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
F32 = torch.float32
# Probes need head dim >= keys: short sequences still cross the interpreter's 16-row tiles.
SHORT = 40


def _chunked_cases():
    return attention_cases(max_batch=3, max_heads=2, max_seqlen=SHORT, head_dims=(16,),
                           dtypes=(F32,), layouts=("contiguous",))


def _cross_cases():
    return cross_attention_cases(max_batch=3, max_heads=2, max_len=14, head_dims=(16,),
                                 dtypes=(F32,))


def _chunked_mask(case: AttentionCase) -> masks.PaddedMask:
    lengths = None if case.lengths is None else torch.tensor(case.lengths, dtype=torch.int32)
    return masks.chunked_causal(case.seqlen, case.chunk_size, lengths, k_rows=case.k_seqlen,
                                **case.mask_args)


def _family_cases():
    return family_cases(max_batch=2, max_heads=2, max_seqlen=SHORT // 2, head_dims=(16,),
                        dtypes=(F32,), layouts=("contiguous",))


def _packed_family_mask(case: PackedChunkedCase) -> masks.PackedMask:
    seg = case.segments
    return masks.chunked_causal_packed(sum(seg.q_lens), sum(seg.k_lens), case.chunk_size,
                                       cu_seqlens_q=masks.cu_seqlens(seg.q_lens),
                                       cu_seqlens_k=masks.cu_seqlens(seg.k_lens),
                                       **case.mask_args)


def _packed_mask(case: CrossAttentionCase) -> masks.PackedMask:
    return masks.cross_attention(sum(case.q_lens), sum(case.k_lens),
                                 cu_seqlens_q=masks.cu_seqlens(case.q_lens),
                                 cu_seqlens_k=masks.cu_seqlens(case.k_lens), causal=case.causal)


def _padded_mask(case: CrossAttentionCase) -> masks.PaddedMask:
    return masks.cross_attention_padded(max(case.q_lens), max(case.k_lens),
                                        k_lengths=torch.tensor(case.k_lens, dtype=torch.int32),
                                        causal=case.causal)


# Edges: a chunk that divides neither N nor the 16-row tile, one token per chunk, one
# chunk, lengths 0 and 1, N just past a tile.
CHUNKED_EDGES = [
    AttentionCase(2, 2, 1, 37, 16, 5, (37, 0), F32, "contiguous", 1),
    AttentionCase(1, 1, 1, 17, 16, 1, None, F32, "contiguous", 2),
    AttentionCase(3, 1, 1, 33, 16, 40, (1, 33, 20), F32, "contiguous", 3),
    AttentionCase(1, 2, 2, 1, 16, 3, None, F32, "contiguous", 4),
]
# Empty query and key segments, Lq != Lk, more queries than keys under causality (rows
# before the first key see nothing), segments that cross tiles.
CROSS_EDGES = [
    CrossAttentionCase((5, 0, 13), (14, 7, 0), 2, 1, 16, False, F32, 5),
    CrossAttentionCase((14, 6, 1), (5, 6, 14), 2, 2, 16, True, F32, 6),
    CrossAttentionCase((3,), (0,), 1, 1, 16, True, F32, 7),
]


def _with(edges):
    def pin(test):
        for edge in edges:
            test = example(case=edge)(test)
        return test
    return pin


# ------------------------------------------------------------ outside definitions


@given(n=st.integers(1, 50), extra=st.integers(0, 20))
def test_chunk_size_one_is_token_causal_and_at_least_n_is_full(n, extra):
    assert_identical(masks.chunked_causal(n, 1).dense()[0, 0],
                     torch.ones(n, n, dtype=torch.bool).tril())
    assert masks.chunked_causal(n, n + extra).dense().all()


@given(case=_chunked_cases().filter(lambda c: c.lengths is not None))
@_with(CHUNKED_EDGES[::2])
def test_chunked_with_lengths_is_each_sample_alone_padded_with_nothing(case):
    dense = _chunked_mask(case).dense()
    for b, n in enumerate(case.lengths):
        alone = torch.zeros(case.seqlen, case.seqlen, dtype=torch.bool)
        alone[:n, :n] = masks.chunked_causal(n, case.chunk_size).dense()[0, 0]
        assert_identical(dense[b, 0], alone)


def _family_by_hand(q_len, k_len, chunk, window, sinks, teacher_forcing) -> torch.Tensor:
    """The family's definition in the issue's words, pair by pair in plain Python."""
    def sees(p, j, strictly_earlier=False):
        cp, cj = p // chunk, j // chunk
        causal = cj < cp if strictly_earlier else cj <= cp
        return causal and (window is None or cp - cj < window or j < sinks)

    half = k_len // 2
    dense = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        p = i + k_len - q_len
        for j in range(k_len):
            if not teacher_forcing:
                dense[i, j] = sees(p, j)
            elif p < half:  # a clean query: clean keys by the rule
                dense[i, j] = j < half and sees(p, j)
            elif j < half:  # a noisy query of chunk c: clean keys of chunks < c
                dense[i, j] = sees(p - half, j, strictly_earlier=True)
            else:  # and the noisy keys of its own chunk
                dense[i, j] = (p - half) // chunk == (j - half) // chunk
    return dense


@given(case=_family_cases())
@example(case=AttentionCase(1, 1, 1, 12, 16, 3, None, F32, "contiguous", 0, window=2, sinks=4,
                            teacher_forcing=True))
@example(case=AttentionCase(1, 1, 1, 5, 16, 4, None, F32, "contiguous", 0, k_seqlen=23,
                            window=1, sinks=6))
def test_the_family_is_its_definition_pair_by_pair(case):
    n_k = case.seqlen if case.k_seqlen is None else case.k_seqlen
    dense = _chunked_mask(case).dense()
    for b in range(dense.shape[0]):
        n = case.seqlen if case.lengths is None else case.lengths[b]
        want = torch.zeros(case.seqlen, n_k, dtype=torch.bool)
        want[:n, :n_k if case.lengths is None else n] = _family_by_hand(
            n, n_k if case.lengths is None else n, case.chunk_size, case.window, case.sinks,
            case.teacher_forcing)
        assert_identical(dense[b, 0], want)


@given(case=_family_cases(), extra=st.integers(0, 3))
def test_a_window_past_every_chunk_is_no_window_and_sinks_need_one(case, extra):
    n_k = case.seqlen if case.k_seqlen is None else case.k_seqlen
    wide = dataclasses.replace(case, window=-(-n_k // case.chunk_size) + extra)
    plain = dataclasses.replace(case, window=None)
    assert_identical(_chunked_mask(wide).dense(), _chunked_mask(plain).dense())
    assert_identical(_chunked_mask(dataclasses.replace(plain, sinks=case.sinks + 5)).dense(),
                     _chunked_mask(plain).dense())


def _xformers_dense(case: CrossAttentionCase) -> torch.Tensor:
    attn_bias = pytest.importorskip("xformers.ops.fmha.attn_bias")
    kind = (attn_bias.BlockDiagonalCausalFromBottomRightMask if case.causal
            else attn_bias.BlockDiagonalMask)
    bias = kind.from_seqlens(list(case.q_lens), list(case.k_lens))
    return bias.materialize((sum(case.q_lens), sum(case.k_lens))).isfinite()


# xformers' bottom-right causal mask needs at least as many keys as queries per segment.
@given(case=_cross_cases().filter(
    lambda c: not c.causal or all(k >= q for q, k in zip(c.q_lens, c.k_lens))))
@example(case=CROSS_EDGES[0])
@example(case=CrossAttentionCase((2, 0, 5), (9, 3, 5), 1, 1, 16, True, F32, 8))
def test_packed_cross_attention_matches_xformers(case):
    assert_identical(_packed_mask(case).dense()[0, 0], _xformers_dense(case))


@given(case=_cross_cases())
@_with(CROSS_EDGES)
def test_padded_cross_attention_is_each_sample_as_one_packed_segment(case):
    dense, Lq = _padded_mask(case).dense(), max(case.q_lens)
    for b, k_len in enumerate(case.k_lens):
        one = masks.cross_attention(Lq, k_len, cu_seqlens_q=masks.cu_seqlens([Lq]),
                                    cu_seqlens_k=masks.cu_seqlens([k_len]), causal=case.causal)
        assert_identical(dense[b, 0, :, :k_len], one.dense()[0, 0])
        assert not dense[b, 0, :, k_len:].any()


@given(case=_cross_cases())
def test_visible_pairs_count_the_dense_mask(case):
    for mask in (_packed_mask(case), _padded_mask(case)):
        assert mask.visible_pairs() == int(mask.dense().sum())
    if not case.causal:
        assert _packed_mask(case).visible_pairs() == sum(
            q * k for q, k in zip(case.q_lens, case.k_lens))


def test_visible_pairs_in_strips(monkeypatch):
    monkeypatch.setattr(masks, "_STRIP_ELEMENTS", 2 * 3 * 37)  # 2 rows a strip, the last short
    mask = masks.chunked_causal(37, 5, torch.tensor([37, 9, 0], dtype=torch.int32))
    # Sample 0: 7 chunks of 5 rows seeing 5, 10, ... 35 keys, 2 rows seeing all 37; sample
    # 1: 5 rows seeing 5, 4 seeing 9; sample 2: nothing.
    assert mask.visible_pairs() == int(mask.dense().sum()) == 25 * 28 + 2 * 37 + 25 + 36


# --------------------------------------------------------------------- FlexAttention


def _blocks(num: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A BlockMask's (num_blocks, indices) pair as a dense (B, H, q_blocks, k_blocks) map."""
    taken = torch.arange(indices.shape[-1]) < num[..., None]
    dense = torch.zeros(indices.shape, dtype=torch.bool)
    return dense.scatter_(-1, indices.long(), taken)


def _block_maps(mask: masks.Mask, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks with a visible pair, blocks all visible) of the dense mask, padded with
    invisible rows and keys to whole blocks (as FlexAttention treats a ragged edge)."""
    dense = mask.dense()
    qb, kb = -(-mask.q_rows // size), -(-mask.k_rows // size)
    padded = F.pad(dense, (0, kb * size - mask.k_rows, 0, qb * size - mask.q_rows))
    tiles = padded.reshape(*padded.shape[:2], qb, size, kb, size).transpose(3, 4)
    return tiles.any((-1, -2)), tiles.all((-1, -2))


def _check_block_mask(mask: masks.Mask, size: int = 16) -> None:
    bm = mask.block_mask(block_size=size)
    some, full = _block_maps(mask, size)
    partial_blocks = _blocks(bm.kv_num_blocks, bm.kv_indices)
    full_blocks = _blocks(bm.full_kv_num_blocks, bm.full_kv_indices)
    assert_identical(full_blocks, full.expand_as(full_blocks))
    assert_identical(partial_blocks | full_blocks, some.expand_as(full_blocks))
    assert not (partial_blocks & full_blocks).any()


@given(case=_chunked_cases())
@_with(CHUNKED_EDGES)
def test_block_mask_of_chunked_causal(case):
    _check_block_mask(_chunked_mask(case))


@given(case=_family_cases(), packed=packed_family_cases(max_batch=3, max_heads=1, max_len=14,
                                                        head_dims=(16,), dtypes=(F32,)))
def test_block_masks_of_the_family(case, packed):
    for mask in (_chunked_mask(case), _packed_family_mask(packed)):
        if mask.q_rows and mask.k_rows:  # FlexAttention takes no empty sequence
            _check_block_mask(mask)


@given(case=_cross_cases())
@_with(CROSS_EDGES)
def test_block_masks_of_cross_attention(case):
    for mask in (_packed_mask(case), _padded_mask(case)):
        if mask.q_rows and mask.k_rows:  # FlexAttention takes no empty sequence
            _check_block_mask(mask)


def _flex_pattern(mask: masks.Mask, flex) -> torch.Tensor:
    B, D = mask.batch or 1, max(16, mask.k_rows)
    q = torch.zeros(B, 1, mask.q_rows, D)
    k = torch.randn(B, 1, mask.k_rows, D)
    v = torch.eye(mask.k_rows, D).expand(B, 1, mask.k_rows, D).contiguous()
    return flex(q, k, v, block_mask=mask.block_mask(block_size=16))[..., :mask.k_rows]


def _uniform(dense: torch.Tensor) -> torch.Tensor:
    """The weights of q = 0 under ``dense``: 1 / |visible| on each visible key."""
    dense = dense.float()
    return dense / dense.sum(-1, keepdim=True).clamp_min(1)


def _assert_uniform(out: torch.Tensor, weights: torch.Tensor, backend: str,
                    teacher_forcing: bool = False) -> None:
    """``out`` is ``weights``. Where a backend merges partial softmaxes by their log-sum-exps
    (the torch backend's superblocks, an unmasked prefix beside a masked rest; triton's
    teacher forcing, three launches), the weights are 1/n only to rounding: the pattern
    exactly, the values to fp32's tolerance."""
    if backend == "torch" or (backend == "triton" and teacher_forcing):
        assert_identical(out > 0, weights > 0)
        torch.testing.assert_close(out, weights)
    else:
        assert_identical(out, weights)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@given(case=_chunked_cases(), cross=_cross_cases(), family=_family_cases())
@example(case=CHUNKED_EDGES[0], cross=CROSS_EDGES[1], family=AttentionCase(
    1, 1, 1, 20, 16, 3, None, F32, "contiguous", 0, window=2, sinks=4, teacher_forcing=True))
def test_flex_attention_eager_sees_what_the_mask_says(case, cross, family):
    for mask in (_chunked_mask(case), _packed_mask(cross), _chunked_mask(family)):
        if mask.q_rows and mask.k_rows:  # FlexAttention takes no empty sequence
            assert_identical(_flex_pattern(mask, flex_attention), _uniform(mask.dense()))


# A family mask: a cache prefill's chunk of queries under a window with sinks.
FAMILY_EDGE = AttentionCase(1, 2, 2, 9, 16, 4, None, F32, "contiguous", 0, k_seqlen=45,
                            window=2, sinks=5)


@pytest.mark.parametrize("which", ["chunked", "cross", "family"])
def test_flex_attention_compiled_forward_parity(which):
    # The compiled kernel skips empty blocks and applies no mask_mod in full ones: it holds
    # the BlockMask's structure, not only the mask_mod, against the reference.
    torch._dynamo.reset()  # a fresh recompile budget: no silent fallback to eager
    mask = {"chunked": lambda: _chunked_mask(CHUNKED_EDGES[0]),
            "cross": lambda: _packed_mask(CROSS_EDGES[1]),
            "family": lambda: _chunked_mask(FAMILY_EDGE)}[which]()
    B, D = mask.batch or 1, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2, rows, D, generator=gen)
               for rows in (mask.q_rows, mask.k_rows, mask.k_rows))
    block_mask, compiled = mask.block_mask(block_size=16), torch.compile(flex_attention)
    assert_parity(compare_with_oracle(
        lambda q, k, v: compiled(q, k, v, block_mask=block_mask),
        lambda q, k, v: masked_attention(q, k, v, mask.dense()), (q, k, v), names="qkv",
        grads=False))


# ------------------------------------------------------------- the ops, every backend


def _probe(op, q_shape, k_shape, rows_dim: int):
    """Run ``op`` on q = 0, random k, v = one-hot rows (along ``rows_dim``) and backpropagate
    do = one-hot query rows; return (out, dv) restricted to the one-hot columns."""
    k_rows, q_rows, D = k_shape[rows_dim], q_shape[rows_dim], q_shape[-1]

    def one_hot(shape, rows):
        eye = torch.eye(rows, D)
        return (eye if rows_dim == -2 else eye[:, None, :]).expand(shape).contiguous()

    q = torch.zeros(q_shape)
    k = torch.randn(k_shape)
    v = one_hot(k_shape, k_rows).requires_grad_()
    out = op(q, k, v)
    out.backward(one_hot(q_shape, q_rows))
    return out.detach()[..., :k_rows], v.grad[..., :q_rows]


@BACKENDS
@given(case=_chunked_cases())
@_with(CHUNKED_EDGES)
def test_chunked_causal_attention_sees_what_the_mask_says(backend, case):
    mask = _chunked_mask(case)
    N, D = case.seqlen, max(16, case.seqlen)
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size, lengths=mask.q_lens,
                 backend=backend)
    out, dv = _probe(op, (case.batch, case.heads, N, D), (case.batch, case.kv_heads, N, D), -2)
    _assert_uniform(out, _uniform(mask.dense()).expand_as(out), backend)
    assert_identical(dv > 0, mask.dense().transpose(-1, -2).expand_as(dv))
    assert not (dv < 0).any()


@BACKENDS
@given(case=_family_cases())
@example(case=AttentionCase(1, 2, 1, 24, 16, 5, None, F32, "contiguous", 0, window=2, sinks=7,
                            teacher_forcing=True))
@example(case=AttentionCase(1, 1, 1, 6, 16, 4, None, F32, "contiguous", 0, k_seqlen=30,
                            window=2, sinks=3))
def test_the_family_sees_what_the_mask_says(backend, case):
    mask = _chunked_mask(case)
    n_q, n_k = mask.q_rows, mask.k_rows
    D = max(16, n_k)
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size, lengths=mask.q_lens,
                 backend=backend, **case.mask_args)
    out, dv = _probe(op, (case.batch, case.heads, n_q, D), (case.batch, case.kv_heads, n_k, D),
                     -2)
    _assert_uniform(out, _uniform(mask.dense()).expand_as(out), backend, case.teacher_forcing)
    assert_identical(dv > 0, mask.dense().transpose(-1, -2).expand_as(dv))


@BACKENDS
@given(case=packed_family_cases(max_batch=3, max_heads=2, max_len=12, head_dims=(16,),
                                dtypes=(F32,)))
def test_packed_family_sees_what_the_mask_says(backend, case):
    mask = _packed_family_mask(case)
    tq, tk = mask.q_rows, mask.k_rows
    D = max(16, tq, tk)
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size,
                 cu_seqlens_q=mask.cu_seqlens_q, cu_seqlens_k=mask.cu_seqlens_k,
                 backend=backend, **case.mask_args)
    out, dv = _probe(op, (tq, case.segments.heads, D), (tk, case.segments.kv_heads, D), 0)
    _assert_uniform(out, _uniform(mask.dense())[0, 0][:, None, :].expand_as(out), backend)
    assert_identical(dv > 0, mask.dense()[0, 0].T[:, None, :].expand_as(dv))


@BACKENDS
@given(case=_cross_cases())
@_with(CROSS_EDGES)
def test_cross_attention_sees_what_the_mask_says(backend, case):
    mask = _packed_mask(case)
    tq, tk = mask.q_rows, mask.k_rows
    D = max(16, tq, tk)
    op = partial(cross_attention, cu_seqlens_q=mask.cu_seqlens_q, cu_seqlens_k=mask.cu_seqlens_k,
                 causal=case.causal, backend=backend)
    out, dv = _probe(op, (tq, case.heads, D), (tk, case.kv_heads, D), 0)
    weights = _uniform(mask.dense())[0, 0]  # (total_q, total_k)
    assert_identical(out, weights[:, None, :].expand_as(out))
    assert_identical(dv > 0, mask.dense()[0, 0].T[:, None, :].expand_as(dv))
    assert not (dv < 0).any()


@BACKENDS
@given(case=_cross_cases().filter(lambda c: max(c.q_lens) > 0 and max(c.k_lens) > 0))
@_with(CROSS_EDGES[:2])
def test_cross_attention_padded_sees_what_the_mask_says(backend, case):
    mask = _padded_mask(case)
    B, Lq, Lk = len(case.q_lens), mask.q_rows, mask.k_rows
    D = max(16, Lq, Lk)
    op = partial(cross_attention_padded, k_lengths=mask.k_lens, causal=case.causal,
                 backend=backend)
    out, dv = _probe(op, (B, case.heads, Lq, D), (B, case.kv_heads, Lk, D), -2)
    weights = _uniform(mask.dense())  # (B, 1, Lq, Lk)
    assert_identical(out, weights.expand_as(out))
    assert_identical(dv > 0, mask.dense().transpose(-1, -2).expand_as(dv))
    assert not (dv < 0).any()
