"""ChunkKVCache and ChunkedCausalSelfAttention's streaming forward: a stream pushed chunk by
chunk (or k chunks at a time, the last push possibly a partial chunk) equals the whole
sequence at once under the same mask (window, sinks), by the parity rule; the compacted key
sequence's mask is the stream's, row by row (mirasol.masks); the buffer is written in place
and does not grow; bad pushes raise, naming what was expected, before anything changes."""

import copy
import gc
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mirasol import masks
from mirasol.layers import ChunkedCausalSelfAttention, ChunkKVCache
from mirasol.testing import assert_identical, assert_parity, compare_with_oracle

DIM, HEADS = 16, 2  # head_dim 8


@dataclass(frozen=True)
class Stream:
    """A stream of ``chunks`` whole chunks plus ``tail`` tokens, pushed ``per_push`` chunks
    at a time through a layer of this mask and head layout."""
    chunk: int
    window: int | None
    sinks: int
    chunks: int
    tail: int = 0
    per_push: int = 1
    kv_heads: int = HEADS
    rope: bool = True

    @property
    def length(self) -> int:
        return self.chunks * self.chunk + self.tail

    def pushes(self) -> list[tuple[int, int]]:
        """(start, end) of each push: ``per_push`` chunks, the last one what is left."""
        step = self.per_push * self.chunk
        return [(s, min(s + step, self.length)) for s in range(0, self.length, step)]

    def cache_size(self) -> dict:
        if self.window is None:
            return dict(capacity=self.length)
        return dict(max_chunks=self.per_push)

    def layer(self, backend: str) -> ChunkedCausalSelfAttention:
        torch.manual_seed(1)
        return ChunkedCausalSelfAttention(DIM, HEADS, num_kv_heads=self.kv_heads,
                                          chunk_size=self.chunk, window_chunks=self.window,
                                          sink_tokens=self.sinks, rope=self.rope,
                                          backend=backend)


@st.composite
def streams(draw, max_chunks: int = 6) -> Stream:
    chunk = draw(st.integers(1, 4))
    return Stream(chunk=chunk, window=draw(st.none() | st.integers(1, max_chunks + 1)),
                  sinks=draw(st.integers(0, 2 * chunk + 1)),
                  chunks=draw(st.integers(1, max_chunks)), tail=draw(st.integers(0, chunk - 1)),
                  per_push=draw(st.integers(1, 3)), kv_heads=draw(st.sampled_from((1, 2))),
                  rope=draw(st.booleans()))


# The edges: window 1, a window covering the stream, sinks 0 / inside the first chunk /
# spanning chunks, grouped-query heads, rope, several chunks per push, a partial last push.
EDGES = [
    Stream(chunk=3, window=1, sinks=0, chunks=5),
    Stream(chunk=2, window=8, sinks=1, chunks=5, per_push=2),
    Stream(chunk=4, window=2, sinks=2, chunks=6, tail=3, kv_heads=1),
    Stream(chunk=2, window=2, sinks=5, chunks=7, per_push=3, tail=1),
    Stream(chunk=3, window=None, sinks=0, chunks=4, tail=2, kv_heads=1, per_push=2),
    Stream(chunk=1, window=3, sinks=1, chunks=8, rope=False),
]
# The interpreter is slow: one stream that still evicts, with sinks pinned, GQA, rope, two
# chunks per push and a partial last one.
TRITON_EDGES = [Stream(chunk=2, window=2, sinks=3, chunks=4, tail=1, kv_heads=1, per_push=2)]


def _x(s: Stream, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(2, s.length, DIM, generator=torch.Generator().manual_seed(s.length),
                       dtype=dtype)


def _streamed(layer, s: Stream, x, *, keep_graph: bool) -> torch.Tensor:
    cache = layer.new_cache(x.shape[0], dtype=x.dtype, keep_graph=keep_graph, **s.cache_size())
    return torch.cat([layer(x[:, a:b], cache=cache) for a, b in s.pushes()], 1)


def _by_dtype(layer):
    """The layer in float32 and float64 (the oracle's copy), picked by the input's dtype."""
    return {torch.float32: layer, torch.float64: copy.deepcopy(layer).double()}


def _whole(s: Stream):
    layers = _by_dtype(s.layer("reference"))
    return lambda x: layers[x.dtype](x)


def _check_stream_equals_whole(s: Stream, backend: str) -> None:
    """keep_graph: the output and dx (through the cached rows) are the whole sequence's."""
    layers = _by_dtype(s.layer(backend))

    def streamed(x):
        return _streamed(layers[x.dtype], s, x, keep_graph=True)

    assert_parity(compare_with_oracle(streamed, _whole(s), [_x(s)], names=["x"]))


# ----------------------------------------------------------------------- the mask


@given(s=streams(max_chunks=12))
@example(s=EDGES[0])
@example(s=EDGES[2])
@example(s=EDGES[3])
@example(s=Stream(chunk=4, window=3, sinks=4, chunks=12, per_push=2))  # sinks = one chunk
def test_compacted_key_rows_have_the_streams_mask(s):
    """Each push's queries against the compacted keys (the rule at compacted positions) see
    exactly what they see in the stream: the same keys at the slots' stream positions, and
    no key the cache dropped. The buffer never holds more than its stated bound."""
    cache = ChunkKVCache(1, 1, 2, chunk_size=s.chunk, window_chunks=s.window,
                         sink_tokens=s.sinks, **s.cache_size())
    if s.window is not None:
        pinned = -(-s.sinks // s.chunk)
        assert cache.capacity == (pinned + s.window - 1 + s.per_push) * s.chunk
    for a, b in s.pushes():
        keys, _ = cache.append(torch.zeros(1, 1, b - a, 2), torch.zeros(1, 1, b - a, 2))
        kept = cache.positions()
        assert keys.shape[2] == cache.filled == kept.numel() <= cache.capacity
        assert kept[-(b - a):].tolist() == list(range(a, b))  # the new rows, last
        real = masks.chunked_causal(b - a, s.chunk, k_rows=b, window_chunks=s.window,
                                    sink_tokens=s.sinks).dense()[0, 0]
        compact = masks.chunked_causal(b - a, s.chunk, k_rows=cache.filled,
                                       window_chunks=s.window,
                                       sink_tokens=s.sinks).dense()[0, 0]
        assert torch.equal(compact, real[:, kept])
        dropped = torch.ones(b, dtype=torch.bool)
        dropped[kept] = False
        assert not real[:, dropped].any()


@given(s=streams())
@example(s=EDGES[2])  # evicts, with sinks pinned
@example(s=EDGES[4])  # no window
def test_a_peek_returns_what_the_push_would_and_changes_nothing(s):
    cache = ChunkKVCache(1, 1, 2, chunk_size=s.chunk, window_chunks=s.window,
                         sink_tokens=s.sinks, **s.cache_size())
    gen = torch.Generator().manual_seed(s.length)
    for a, b in s.pushes():
        k, v = torch.randn(2, 1, 1, b - a, 2, generator=gen)
        before = cache.state_dict()
        peeked = cache.peek(k, v)
        after = cache.state_dict()
        assert before["length"] == after["length"] and before["evicted"] == after["evicted"]
        assert_identical(after["keys"], before["keys"])
        for got, want in zip(peeked, cache.append(k, v)):
            assert_identical(got, want)


# ----------------------------------------------------------------------- parity


@settings(max_examples=12)
@given(s=streams())
@example(s=EDGES[1])
@example(s=EDGES[4])
def test_streaming_equals_the_whole_sequence(s):
    _check_stream_equals_whole(s, "torch")


@pytest.mark.parametrize("s", EDGES, ids=repr)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_streaming_edges_equal_the_whole_sequence(backend, s):
    _check_stream_equals_whole(s, backend)


@pytest.mark.parametrize("s", TRITON_EDGES, ids=repr)
def test_streaming_on_triton_equals_the_whole_sequence(s):
    _check_stream_equals_whole(s, "triton")


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_a_step_against_a_detached_cache_backpropagates_into_its_chunks(backend):
    """The default cache (Self-Forcing's truncated gradient): a push of two chunks after
    five cached ones equals its rows of the whole sequence, and so do the gradients of its
    own x (through q, k and v), the cached prefix being a constant."""
    s = Stream(chunk=2, window=3, sinks=1, chunks=7, per_push=2, kv_heads=1)
    layers, whole = _by_dtype(s.layer(backend)), _by_dtype(s.layer("reference"))
    prefix = _x(s)[:, :10]

    def step(x_new):
        layer = layers[x_new.dtype]
        cache = layer.new_cache(2, max_chunks=2, dtype=x_new.dtype)
        with torch.no_grad():
            for a in range(0, 10, 4):
                layer(prefix[:, a:a + 4].to(x_new.dtype), cache=cache)
        return layer(x_new, cache=cache)

    def rows(x_new):
        return whole[x_new.dtype](torch.cat((prefix.to(x_new.dtype), x_new), 1))[:, 10:]

    assert_parity(compare_with_oracle(step, rows, [_x(s)[:, 10:]], names=["x_new"]))


def test_the_default_cache_truncates_the_gradient_and_keep_graph_does_not():
    s = Stream(chunk=2, window=2, sinks=1, chunks=4)
    layer = s.layer("torch")
    for keep_graph in (False, True):
        x = _x(s).requires_grad_(True)
        _streamed(layer, s, x, keep_graph=keep_graph)[:, -2:].sum().backward()
        assert x.grad[:, -2:].any() and x.grad[:, :2].any() == keep_graph
        assert layer.qkv.weight.grad.any()
        layer.zero_grad()


def test_a_push_needing_a_gradient_gives_the_no_grad_values():
    """The two ways append hands out keys (buffer views without a gradient, a fresh
    concatenation with one) feed the op the same values: identical outputs."""
    s = EDGES[3]
    layer, x = s.layer("torch"), _x(s)
    with torch.no_grad():
        expected = _streamed(layer, s, x, keep_graph=False)
    assert_identical(_streamed(layer, s, x, keep_graph=False).detach(), expected)


# ----------------------------------------------------------------------- the buffer


def test_state_dict_reset_and_writes_in_place():
    s = Stream(chunk=2, window=2, sinks=3, chunks=9)
    layer, x = s.layer("torch"), _x(s)
    cache = layer.new_cache(2)
    pointers = (cache.keys.data_ptr(), cache.values.data_ptr())
    with torch.no_grad():
        first = [layer(x[:, a:b], cache=cache) for a, b in s.pushes()]
        assert (cache.keys.data_ptr(), cache.values.data_ptr()) == pointers
        cache.reset()
        for (a, b), out in zip(s.pushes()[:5], first):
            assert_identical(layer(x[:, a:b], cache=cache), out)
        saved = cache.state_dict()
        assert saved["keys"].shape == (2, HEADS, cache.filled, 8)
        cache.load_state_dict(copy.deepcopy(saved))
        for (a, b), out in zip(s.pushes()[5:], first[5:]):
            assert_identical(layer(x[:, a:b], cache=cache), out)
        cache.load_state_dict(saved)  # back to chunk 5 after further pushes
        a, b = s.pushes()[5]
        assert_identical(layer(x[:, a:b], cache=cache), first[5])
    with pytest.raises(ValueError, match=r"state keys \(2, 2, 8, 8\) does not fit: .* needs "
                                         r"12 rows \(capacity 8\)"):
        cache.load_state_dict(dict(saved, length=14))


def _live_tensor_bytes() -> int:
    """Bytes of every distinct storage a live tensor of this process holds."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance on deprecated module aliases warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type != "meta":
            storage = obj.untyped_storage()
            try:
                storages[storage.data_ptr()] = storage.nbytes()
            except RuntimeError:  # a fake tensor another test left alive: it holds no memory
                continue
    return sum(storages.values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_memory_does_not_grow_along_a_stream(device):
    """Chunk 100 and chunk 2,000 of a stream hold the same: the cache's buffers (their
    stated size), every live tensor of the process, and on CUDA the allocator's peak."""
    C, W, S = 2, 3, 3
    torch.manual_seed(0)
    layer = ChunkedCausalSelfAttention(8, 1, chunk_size=C, window_chunks=W, sink_tokens=S,
                                       backend="torch").to(device)
    cache = layer.new_cache(1)
    x = torch.randn(1, C, 8, device=device)
    measured = {}
    with torch.no_grad():
        for chunk in range(1, 2001):
            layer(x, cache=cache)
            if chunk in (100, 2000):
                peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
                measured[chunk] = (cache.nbytes, _live_tensor_bytes(), peak)
    assert cache.length == 2000 * C and cache.filled == (2 + W - 1 + 1) * C == cache.capacity
    assert cache.nbytes == 2 * cache.capacity * 8 * 4
    assert measured[100] == measured[2000], measured


# ----------------------------------------------------------------------- bad input


def test_bad_caches_and_pushes_raise_before_anything_changes():
    def cache(**kw):
        args = dict(chunk_size=2, window_chunks=2, sink_tokens=1) | kw
        return ChunkKVCache(2, 2, 4, **args)

    with pytest.raises(ValueError, match="window_chunks must be a positive int, got 0"):
        cache(window_chunks=0)
    with pytest.raises(ValueError, match="sink_tokens must be a non-negative int, got -1"):
        cache(sink_tokens=-1)
    with pytest.raises(ValueError, match="needs capacity"):
        cache(window_chunks=None)
    with pytest.raises(ValueError, match="capacity is for window_chunks=None"):
        cache(capacity=10)
    with pytest.raises(ValueError, match="max_chunks sizes a windowed cache"):
        cache(window_chunks=None, capacity=10, max_chunks=2)
    for kw in (dict(window_chunks=0), dict(sink_tokens=-1)):
        with pytest.raises(ValueError, match="ChunkedCausalSelfAttention: .* must be a"):
            ChunkedCausalSelfAttention(16, 2, chunk_size=2, **kw)

    def rows(n, h=2, d=4, dtype=torch.float32):
        return torch.ones(2, h, n, d, dtype=dtype)

    c = cache(max_chunks=2)
    c.append(rows(2), rows(2))
    before = (c.length, c.keys.clone())
    bad = [
        (rows(2, h=1), ValueError, r"k must be \(batch, num_kv_heads 2, n, head_dim 4\), "
                                   r"got \(2, 1, 2, 4\)"),
        (rows(2, d=8), ValueError, r"got \(2, 2, 2, 8\)"),
        (rows(2, dtype=torch.float64), TypeError, r"k.dtype \(torch.float64\) must be the "
                                                  r"cache's \(torch.float32\)"),
        (rows(6), ValueError, r"a push of 6 tokens exceeds max_chunks \(2\) chunks of 2"),
        (rows(0), ValueError, "at least 1 token"),
    ]
    for k, error, message in bad:
        with pytest.raises(error, match=message):
            c.append(k, k)
    with pytest.raises(ValueError, match="a push on cpu into a cache on meta"):
        cache(device="meta").append(rows(2), rows(2))
    with pytest.raises(ValueError, match="a push of batch 1 into a cache of batch 2"):
        c.append(rows(2)[:1], rows(2)[:1])
    assert (c.length, c.keys.tolist()) == (before[0], before[1].tolist())

    unbounded = cache(window_chunks=None, capacity=6)
    unbounded.append(rows(4), rows(4))
    with pytest.raises(ValueError, match="a push of 4 tokens after 4 exceeds the capacity "
                                         "of 6 tokens"):
        unbounded.append(rows(4), rows(4))
    unbounded.append(rows(1), rows(1))  # a partial chunk ends the stream
    with pytest.raises(ValueError, match=r"the stream ended in a partial chunk \(5 tokens, "
                                         r"chunk_size 2\); reset\(\) the cache"):
        unbounded.append(rows(1), rows(1))


def test_the_layer_refuses_a_cache_it_did_not_build():
    layer = ChunkedCausalSelfAttention(16, 2, chunk_size=2, window_chunks=2, sink_tokens=1)
    x = torch.randn(2, 2, 16)
    other = ChunkedCausalSelfAttention(16, 2, chunk_size=3, window_chunks=2).new_cache(2)
    with pytest.raises(ValueError, match=r"the cache was built for another layer: chunk_size "
                                         r"2 \(layer\) != 3 \(cache\), sink_tokens 1"):
        layer(x, cache=other)
    with pytest.raises(ValueError, match="lengths is for whole sequences"):
        layer(x, torch.tensor([2, 2]), cache=layer.new_cache(2))
    with pytest.raises(TypeError, match="cache must be a ChunkKVCache"):
        layer(x, cache=object())
