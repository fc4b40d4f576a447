"""Invariants of chunked causal attention (DESIGN.md §5), on both fast backends."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st

from mirasol.ops import chunked_causal_attention
from mirasol.testing import (assert_identical, assert_parity, compare_with_oracle,
                             poison_allocations)
from mirasol.testing.strategies import AttentionCase, attention_cases

BACKENDS = pytest.mark.parametrize("backend", ["triton", "torch"])
# Exact properties need no long sequences: 48 tokens span three of the interpreter's tiles.
SHORT = 48


def _sdpa(q, k, v, **kw):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1], **kw)


@BACKENDS
@given(case=attention_cases(allow_lengths=False, max_chunk=1, max_seqlen=SHORT))
def test_chunk_size_one_is_causal_attention(backend, case):
    # Oracle: PyTorch's own causal SDPA in float64, an outside definition of the mask.
    q, k, v, _ = case.tensors()
    assert_parity(compare_with_oracle(
        partial(chunked_causal_attention, chunk_size=1, backend=backend),
        partial(chunked_causal_attention, chunk_size=1, backend="reference"),
        (q, k, v), names="qkv", oracle=partial(_sdpa, is_causal=True)))


@BACKENDS
@given(case=attention_cases(allow_lengths=False, max_seqlen=SHORT),
       extra=st.integers(0, 50))
def test_chunk_size_at_least_n_is_full_attention(backend, case, extra):
    q, k, v, _ = case.tensors()
    chunk = case.seqlen + extra
    assert_parity(compare_with_oracle(
        partial(chunked_causal_attention, chunk_size=chunk, backend=backend),
        partial(chunked_causal_attention, chunk_size=chunk, backend="reference"),
        (q, k, v), names="qkv", oracle=_sdpa))


def _grads(backend, case, q, k, v, lengths, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = chunked_causal_attention(q, k, v, case.chunk_size, lengths=lengths, backend=backend)
    out.backward(do)
    return out, q.grad, k.grad, v.grad


@BACKENDS
@given(case=attention_cases(max_batch=4, max_seqlen=SHORT).filter(
    lambda c: c.lengths is not None))
@example(case=AttentionCase(3, 2, 1, 37, 40, 5, (37, 0, 16), torch.float32, "contiguous", 7))
def test_varlen_equals_per_sample_loop(backend, case):
    q, k, v, lengths = case.tensors()
    do = torch.randn_like(q)
    batched = _grads(backend, case, q, k, v, lengths, do)
    for b, n in enumerate(case.lengths):
        single = _grads(backend, case, q[b:b + 1, :, :n], k[b:b + 1, :, :n],
                        v[b:b + 1, :, :n], None, do[b:b + 1, :, :n])
        for got, want in zip(batched, single):
            assert_identical(got[b:b + 1, :, :n], want)
            # Past the length: zero output, zero gradients.
            assert not got[b, :, n:].any()


@BACKENDS
@given(case=attention_cases(max_batch=3, max_seqlen=SHORT), data=st.data())
def test_result_does_not_depend_on_batch_position(backend, case, data):
    q, k, v, lengths = case.tensors()
    perm = torch.tensor(data.draw(st.permutations(range(case.batch))))
    do = torch.randn_like(q)
    base = _grads(backend, case, q, k, v, lengths, do)
    shuffled = _grads(backend, case, q[perm], k[perm], v[perm],
                      None if lengths is None else lengths[perm], do[perm])
    for got, want in zip(shuffled, base):
        assert_identical(got, want[perm])


@BACKENDS
@given(case=attention_cases(layouts=("bnhd", "padded"), max_seqlen=SHORT))
def test_non_contiguous_equals_contiguous(backend, case):
    q, k, v, lengths = case.tensors()
    assume(not q.is_contiguous())  # a (B, N, H, D) buffer with H == 1 or N == 1 is contiguous
    do = torch.randn_like(q)
    strided = _grads(backend, case, q, k, v, lengths, do)
    dense = _grads(backend, case, q.contiguous(), k.contiguous(), v.contiguous(), lengths, do)
    for got, want in zip(strided, dense):
        assert_identical(got, want)


@BACKENDS
@given(case=attention_cases(max_seqlen=SHORT))
def test_every_output_element_is_written(backend, case):
    q, k, v, lengths = case.tensors()
    with poison_allocations():
        out, dq, dk, dv = _grads(backend, case, q, k, v, lengths, torch.randn_like(q))
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not t.isnan().any(), f"{name} has unwritten (NaN-poisoned) elements"


def _fast_kernels(q, k, v, **family):
    """(out, dq) of the triton backend's fast kernels alone, without the NaN repair passes
    (which would make the outputs exact whatever the fast kernels loaded)."""
    from mirasol.kernels.attention import (Segments, attn_bwd_delta_launch, attn_bwd_dq_launch,
                                           attn_fwd_launch)

    seg = Segments.chunked(q.shape[2], max_k=k.shape[2], **family)
    scale = q.shape[-1] ** -0.5
    out, lse = torch.empty_like(q), torch.empty(q.shape[:3])
    attn_fwd_launch(q, k, v, out, lse, seg, scale).run()
    do, delta, dq = torch.ones_like(q), torch.empty(q.shape[:3]), torch.empty_like(q)
    attn_bwd_delta_launch(out, do, delta).run()
    attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg, scale).run()
    return out, dq


# (key rows no query sees, rows whose queries are checked, the family's arguments, q rows).
# With chunk 16 or 32, the interpreter's 16-row query blocks below row 32 end in a chunk
# that ends by key 32. A chunk of 16 queries (the last of 96 positions) with a window of 2
# and 5 sinks sees keys [0, 5) and [64, 96): the blocks between are never loaded.
UNSEEN = {
    "causal_16": (slice(32, None), slice(0, 32), dict(chunk_size=16), 64),
    "causal_32": (slice(32, None), slice(0, 32), dict(chunk_size=32), 64),
    "window_sinks_prefill": (slice(5, 64), slice(None), dict(chunk_size=16, window=2, sinks=5),
                             16),
    "window_prefill": (slice(0, 48), slice(None), dict(chunk_size=16, window=3), 16),
}


@BACKENDS
@pytest.mark.parametrize("which", UNSEEN)
def test_keys_no_query_block_can_see_are_never_read(backend, which):
    # Poisoned with NaN, keys no query of a block sees must not reach its rows — not even as
    # 0 * NaN through a masked-out probability, which is what a kernel that loaded every
    # block and masked afterwards would produce. The triton backend's fast kernels are run
    # alone (the repair pass would mend such a NaN) and must not change a bit. The torch
    # backend's masked pieces (a superblock's own chunks) hold hidden keys, never as a term:
    # with a NaN among them a piece runs the math version, so its rows equal the clean
    # run's to rounding, without a NaN.
    unseen, rows, family, n_q = UNSEEN[which]
    q = torch.randn(1, 2, n_q, 32)
    k, v = torch.randn(2, 1, 2, 96 if n_q == 16 else 64, 32).unbind(0)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, unseen], v_bad[:, :, unseen] = float("nan"), float("nan")
    if backend == "triton":
        got, want = (_fast_kernels(q, k_, v_, **family) for k_, v_ in ((k_bad, v_bad), (k, v)))
    else:
        op = partial(chunked_causal_attention, chunk_size=family["chunk_size"],
                     window_chunks=family.get("window"), sink_tokens=family.get("sinks", 0),
                     backend=backend)
        got, want = (_out_and_dq(op, q, k_, v_) for k_, v_ in ((k_bad, v_bad), (k, v)))
    for g, w in zip(got, want):
        assert not g[:, :, rows].isnan().any()
        if backend == "triton":
            assert_identical(g[:, :, rows], w[:, :, rows])
        else:
            torch.testing.assert_close(g[:, :, rows], w[:, :, rows])


def _out_and_dq(op, q, k, v):
    q = q.clone().requires_grad_()
    out = op(q, k, v)
    (dq,) = torch.autograd.grad(out, q, torch.ones_like(out))
    return out, dq
