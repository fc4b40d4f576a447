"""Cross-attention: parity of both fast backends with the float64 oracle (DESIGN.md §5),
packed == padded == per-sample loop, the mask semantics of an outside definition
(xformers' BlockDiagonalMask), and bad inputs."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given

from mirasol.ops import BackendUnavailable, cross_attention, cross_attention_padded
from mirasol.testing import (assert_identical, assert_parity, compare_with_oracle,
                             poison_allocations)
from mirasol.testing.strategies import CrossAttentionCase, cross_attention_cases

F32, F16 = torch.float32, torch.float16
BACKENDS = pytest.mark.parametrize("backend", ["triton", "torch"])


def _case(q_lens, k_lens, H=2, H_kv=2, D=32, causal=False, dtype=F32):
    return CrossAttentionCase(tuple(q_lens), tuple(k_lens), H, H_kv, D, causal, dtype, 99)


# Edges: a segment without keys, without queries, one-token segments, lengths that are not
# multiples of the interpreter's 16-row tiles, more queries than keys under causality
# (early queries see nothing), grouped-query heads, non-power-of-two head dims.
EDGES = [
    _case([1], [1]),
    _case([3, 0, 5], [4, 2, 0], D=40),
    _case([17, 1], [33, 1], H=4, H_kv=1, D=80, dtype=F16),
    _case([20, 6], [5, 6], causal=True),
    _case([16, 16], [32, 17], causal=True, D=96, dtype=F16),
    _case([9], [200], D=256),
]


def _with_edges(test):
    for edge in EDGES:
        test = example(case=edge)(test)
    return test


def _packed_op(case, backend, cu_q, cu_k):
    return partial(cross_attention, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=case.causal,
                   backend=backend)


@BACKENDS
@given(case=cross_attention_cases())
@_with_edges
def test_packed_parity(backend, case):
    q, k, v, cu_q, cu_k = case.packed()
    assert_parity(compare_with_oracle(_packed_op(case, backend, cu_q, cu_k),
                                      _packed_op(case, "reference", cu_q, cu_k), (q, k, v),
                                      names="qkv", seed=case.seed))


@BACKENDS
@given(case=cross_attention_cases(max_batch=3))
@_with_edges
def test_padded_parity(backend, case):
    q, k, v, k_lengths = case.padded()
    op = partial(cross_attention_padded, k_lengths=k_lengths, causal=case.causal)
    assert_parity(compare_with_oracle(partial(op, backend=backend),
                                      partial(op, backend="reference"), (q, k, v),
                                      names="qkv", seed=case.seed))


def _grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out, q.grad, k.grad, v.grad


@BACKENDS
@given(case=cross_attention_cases(max_batch=3, max_len=24, causal=(False,)))
@example(case=_case([3, 0, 5], [4, 2, 0]))
def test_packed_equals_padded_equals_per_sample(backend, case):
    q, k, v, cu_q, cu_k = case.packed()
    do = torch.randn_like(q)
    packed = _grads(_packed_op(case, backend, cu_q, cu_k), q, k, v, do)

    qp, kp, vp, k_lengths = case.padded()
    do_padded = torch.zeros_like(qp)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(case.q_lens)):
        do_padded[b, :, :case.q_lens[b]] = do[bounds_q[b]:bounds_q[b + 1]].transpose(0, 1)
    padded = _grads(partial(cross_attention_padded, k_lengths=k_lengths, backend=backend),
                    qp, kp, vp, do_padded)

    for b in range(len(case.q_lens)):
        rows, keys = slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])
        nq, nk = case.q_lens[b], case.k_lens[b]
        single = _grads(partial(cross_attention_padded, backend=backend),
                        qp[b:b + 1, :, :nq], kp[b:b + 1, :, :nk], vp[b:b + 1, :, :nk],
                        do_padded[b:b + 1, :, :nq]) if nk and nq else None
        # (a sample without queries or keys is covered by the padded form alone)
        for i, (t_packed, t_padded) in enumerate(zip(packed, padded)):
            sel = rows if i in (0, 1) else keys
            n = nq if i in (0, 1) else nk
            got_packed = t_packed[sel].transpose(0, 1)
            got_padded = t_padded[b, :, :n]
            if single is not None:
                assert_identical(got_packed, single[i][0])
            if backend == "triton":
                assert_identical(got_padded, got_packed)
            else:
                # PyTorch's CPU kernel blocks its sums by row count, and a padded sample's
                # piece has max(q_lens) rows: equal up to rounding, not bitwise.
                torch.testing.assert_close(got_padded, got_packed)
        # Padding keys get no gradient.
        assert not padded[2][b, :, nk:].any() and not padded[3][b, :, nk:].any()


def _xformers_sdpa(case, q, k, v):
    # The outside definition: xformers' mask classes (they work on CPU), fed to SDPA.
    from xformers.ops.fmha import attn_bias

    kind = (attn_bias.BlockDiagonalCausalFromBottomRightMask if case.causal
            else attn_bias.BlockDiagonalMask)
    bias = kind.from_seqlens(list(case.q_lens), list(case.k_lens)).materialize(
        (q.shape[0], k.shape[0]), dtype=q.dtype, device=q.device)
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.repeat_interleave(group, 1).transpose(0, 1)[None],
        v.repeat_interleave(group, 1).transpose(0, 1)[None], attn_mask=bias)
    return out[0].transpose(0, 1)


@BACKENDS
@given(case=cross_attention_cases(max_batch=3, min_keys=1).filter(
    # xformers' causal masks need at least as many keys as queries in every segment, and
    # rows with no key are NaN under SDPA (ours are 0, tested above).
    lambda c: not c.causal or all(nk >= nq for nq, nk in zip(c.q_lens, c.k_lens))))
def test_mask_semantics_match_xformers(backend, case):
    q, k, v, cu_q, cu_k = case.packed()
    assert_parity(compare_with_oracle(_packed_op(case, backend, cu_q, cu_k),
                                      _packed_op(case, "reference", cu_q, cu_k), (q, k, v),
                                      names="qkv", oracle=partial(_xformers_sdpa, case)))


@BACKENDS
@given(case=cross_attention_cases(max_batch=3, max_len=24))
def test_every_output_element_is_written(backend, case):
    q, k, v, cu_q, cu_k = case.packed()
    with poison_allocations():
        grads = _grads(_packed_op(case, backend, cu_q, cu_k), q, k, v, torch.randn_like(q))
    for name, t in zip(("out", "dq", "dk", "dv"), grads):
        assert not t.isnan().any(), f"{name} has unwritten (NaN-poisoned) elements"


@BACKENDS
def test_keys_of_other_segments_are_never_read(backend):
    # 40 keys in segment 0, NaN keys in segment 1: segment 0's queries must not see them,
    # not even as 0 * NaN through a masked probability.
    case = _case([20, 20], [40, 24])
    q, k, v, cu_q, cu_k = case.packed()
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[40:], v_bad[40:] = float("nan"), float("nan")
    out = cross_attention(q, k_bad, v_bad, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend)
    want = cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend)
    assert_identical(out[:20], want[:20])


@BACKENDS
def test_segment_without_keys_gives_zeros_and_zero_gradients(backend):
    q, k, v, cu_q, cu_k = _case([4, 3], [5, 0]).packed()
    out, dq, dk, dv = _grads(_packed_op(_case([4, 3], [5, 0]), backend, cu_q, cu_k), q, k, v,
                             torch.ones(7, 2, 32))
    assert not out[4:].any() and not dq[4:].any()
    assert out.isfinite().all() and dq.isfinite().all() and dk.isfinite().all()


def _packed_inputs():
    q, k, v, cu_q, cu_k = _case([3, 5], [4, 6], H=4).packed()
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_bad_inputs_name_the_argument(backend):
    q, k, v, cu_q, cu_k = _packed_inputs()

    def call(**kw):
        args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend)
        args.update(kw)
        return cross_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)

    with pytest.raises(TypeError, match="cu_seqlens_q must be int32 .*got torch.int64"):
        call(cu_seqlens_q=cu_q.long())
    with pytest.raises(ValueError, match=r"cu_seqlens_k must start at 0, never decrease and "
                                         r"end at the number of tokens \(10\), got \[0, 7, 6\]"):
        call(cu_seqlens_k=torch.tensor([0, 7, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_q must .* end at the number of tokens "
                                         r"\(8\), got \[0, 3, 7\]"):
        call(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"different batch sizes \(2 and 3 segments\)"):
        call(cu_seqlens_k=torch.tensor([0, 4, 6, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of .* "
                                         r"key/value heads \(3\)"):
        call(k=torch.randn(10, 3, 32), v=torch.randn(10, 3, 32))
    with pytest.raises(ValueError, match=r"q must be 3-D \(total_tokens, heads, head_dim\)"):
        call(q=q[None])
    with pytest.raises(ValueError, match=r"max_seqlen_q = 4 is shorter than the longest "
                                         r"segment \(5\)"):
        call(max_seqlen_q=4)
    with pytest.raises(ValueError, match=r"k has head dim 16 but q has 32"):
        call(k=k[..., :16], v=v[..., :16])


def test_padded_bad_lengths_and_refusals():
    q, k, v, k_lengths = _case([3, 5], [4, 6]).padded()
    with pytest.raises(ValueError, match=r"k_lengths must lie in \[0, 6\]"):
        cross_attention_padded(q, k, v, k_lengths=torch.tensor([7, 1]))
    with pytest.raises(ValueError, match=r"k_lengths must have shape \(2,\)"):
        cross_attention_padded(q, k, v, k_lengths=torch.tensor([1]))
    with pytest.raises(BackendUnavailable, match="head dim 272 exceeds the maximum of 256"):
        big = torch.randn(1, 1, 2, 272)
        cross_attention_padded(big, big, big, backend="triton")
