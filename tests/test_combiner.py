"""TokenLearner and the Combiners: fast path == slow reference path on the same weights
(forward and every parameter gradient, the §5 rule at module level), shapes, causality."""

import pytest
import torch

from mirasol import TokenLearner, TransformerCombiner, TTMCombiner, reference
from mirasol.layers import Block
from mirasol.testing import (assert_identical, assert_parity, compare_module_with_oracle,
                             parity_report)

BACKENDS = pytest.mark.parametrize("backend", ["triton", "torch"])


def _av(B=2, T=3, Nv=10, Na=6, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, Nv, dim, generator=gen), torch.randn(B, T, Na, dim, generator=gen)


def test_token_learner_state_dict_matches_the_plain_pytorch_one():
    torch.manual_seed(0)
    fast, plain = TokenLearner(32, 6, bottleneck_dim=16), reference.TokenLearner(32, 6, 16)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fast.state_dict())
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 20, 32)
    oracle = reference.TokenLearner(32, 6, 16).double()
    oracle.load_state_dict(plain.state_dict())
    assert_parity(parity_report("out", fast(x), plain(x), oracle(x.double())))


@BACKENDS
def test_token_learner_packed_and_lengths(backend):
    torch.manual_seed(0)
    layer = TokenLearner(24, 5, bottleneck_dim=8, backend=backend)
    x = torch.randn(3, 12, 24)
    lengths = torch.tensor([12, 0, 7])
    padded = layer(x, lengths=lengths)
    packed = layer(torch.cat([x[b, :n] for b, n in enumerate(lengths.tolist())]),
                   cu_seqlens=torch.tensor([0, 12, 12, 19], dtype=torch.int32))
    assert_identical(packed, padded)
    for b, n in enumerate(lengths.tolist()):
        want = layer(x[b:b + 1, :n]) if n else torch.zeros(1, 5, 24)
        assert_identical(padded[b:b + 1], want)


@BACKENDS
@pytest.mark.parametrize("kind", ["transformer", "ttm"])
@pytest.mark.parametrize("with_audio", [True, False])
def test_fast_path_matches_reference_path(backend, kind, with_audio):
    torch.manual_seed(0)
    combiner = (TransformerCombiner(32, num_tokens=4, depth=2, num_heads=2) if kind == "transformer"
                else TTMCombiner(32, num_tokens=4, memory_size=8, depth=1, num_heads=2,
                                 bottleneck_dim=16))
    video, audio = _av()
    inputs = (video, audio) if with_audio else (video,)
    reports = compare_module_with_oracle(combiner, inputs, backend=backend,
                                         names=("video", "audio"))
    assert len(reports) == 1 + len(inputs) + len(list(combiner.parameters()))
    assert_parity(reports)


@pytest.mark.parametrize("kind", ["transformer", "ttm"])
@pytest.mark.parametrize("T", [1, 5])
def test_shape_for_any_number_of_chunks_and_parameters_independent_of_it(kind, T):
    make = {"transformer": lambda: TransformerCombiner(32, num_tokens=4, num_heads=2),
            "ttm": lambda: TTMCombiner(32, num_tokens=4, memory_size=8, num_heads=2)}[kind]
    combiner = make()
    video, audio = _av(T=T, Nv=7 + T)
    assert combiner(video, audio).shape == (2, T, 4, 32)
    assert (sum(p.numel() for p in combiner.parameters())
            == sum(p.numel() for p in make().parameters()))


def test_ttm_is_causal_over_chunks():
    torch.manual_seed(0)
    ttm = TTMCombiner(32, num_tokens=4, memory_size=8, num_heads=2)
    video, audio = _av(T=4)
    changed = video.clone()
    changed[:, 2:] += 1.0
    a, b = ttm(video, audio), ttm(changed, audio)
    assert_identical(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_transformer_combiner_chunks_do_not_see_each_other():
    torch.manual_seed(0)
    combiner = TransformerCombiner(32, num_tokens=4, num_heads=2)
    video, audio = _av(T=3)
    changed = video.clone()
    changed[:, 1] += 1.0
    a, b = combiner(video, audio), combiner(changed, audio)
    assert_identical(a[:, [0, 2]], b[:, [0, 2]])


def test_last_layer_with_only_the_needed_queries_equals_the_full_layer():
    torch.manual_seed(0)
    block = Block(32, 2)
    x = torch.randn(6, 20, 32)
    assert_identical(block(x, queries=4), block(x)[:, -4:])
