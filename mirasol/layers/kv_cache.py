"""A rolling key/value cache for chunk-by-chunk generation under the block-causal family's
mask (:mod:`mirasol.masks`, DESIGN.md §2a): CausVid / Self-Forcing / LongLive style
streaming, where each call brings the next chunks of a stream and attends them to what came
before.

Why a compacted key sequence is exact. With ``C = chunk_size``, ``W = window_chunks`` and
``S = sink_tokens``, the new chunks ``f, f + 1, ...`` of a stream see the sinks ``[0, S)``,
the ``W - 1`` chunks before chunk ``f`` and themselves, nothing else. The cache keeps the
first ``G = ceil(S / C)`` whole chunks (pinned: the sinks live there) and the chunks from
``max(G, f - W + 1)`` on, in stream order, so the key sequence it hands to
:func:`mirasol.ops.chunked_causal_attention` is ``[chunks 0..G-1][chunks f-W+1..f-1][new
chunks]``. Every part starts on a chunk boundary, so chunk *distances* between retained and
new chunks are the stream's; a key of the pinned chunks is at distance >= W from every new
query once anything was evicted, so only its sinks are visible, as in the stream; the evicted
chunks are at distance >= W and hold no sink. The op's rule applied to the compacted
positions therefore gives exactly the stream's mask (tests/test_kv_cache.py checks the dense
masks row by row). Before the first eviction the buffer is simply the stream's prefix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mirasol.ops._checks import check_positive_int, shape_of

_NAME = "ChunkKVCache"


class ChunkKVCache:
    """Keys and values of one chunk-causal attention layer over a stream, for
    chunk-by-chunk generation: a preallocated buffer (B, num_kv_heads, capacity, head_dim)
    each for keys and values, written in place.

    Every sample of the batch is at the same stream position (:attr:`length` tokens
    pushed). A push (:meth:`append`) is a whole number ``k >= 1`` of chunks; the last push of
    a stream may end in a partial chunk, which ends the stream (another push raises until
    :meth:`reset`).

    Memory. With ``window_chunks`` ``W``, ``G = ceil(sink_tokens / chunk_size)`` pinned
    chunks and pushes of at most ``max_chunks`` chunks, the buffers hold exactly
    ``capacity = (G + W - 1 + max_chunks) * chunk_size`` rows each, allocated once and never
    grown: a push of ``k`` chunks uses ``(G + W - 1 + k) * chunk_size`` rows at most (the
    pinned chunks, the ``W - 1`` before the first new one, the new ones), which stay in use
    until the next push evicts what it no longer sees. Without a window every key stays
    visible, so the cache is unbounded: ``capacity`` (tokens) is given up front and a push
    past it raises.

    Gradients. By default the cache stores detached keys and values in place (Self-Forcing's
    truncated gradient): the keys/values :meth:`append` returns carry the gradient of the
    new rows (so a chunk-vs-cache call backpropagates into its own x, q, k and v) but not of
    the cached ones. With ``keep_graph=True`` each write builds new buffers out of place
    (``Tensor.slice_scatter``), so the cached keys/values keep their autograd history and
    gradients reach the pushes that produced them; the autograd graph then keeps every
    push's buffers alive until backward (the cost of backpropagating through the stream).

    Args:
        batch, num_kv_heads, head_dim: the shape of the keys/values pushed.
        chunk_size, window_chunks, sink_tokens: the mask's rule, as in
            :func:`mirasol.ops.chunked_causal_attention`.
        max_chunks: windowed only: the most chunks one push holds (default 1).
        capacity: unbounded (``window_chunks=None``) only, and required there: tokens the
            stream may reach.
        dtype, device: of the buffers (and of every push).
        keep_graph: keep the cached keys/values' autograd history (above).
    """

    def __init__(self, batch: int, num_kv_heads: int, head_dim: int, *, chunk_size: int,
                 window_chunks: int | None = None, sink_tokens: int = 0,
                 max_chunks: int | None = None, capacity: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 keep_graph: bool = False):
        for name, value in (("batch", batch), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("chunk_size", chunk_size)):
            check_positive_int(_NAME, name, value)
        check_rule(_NAME, window_chunks, sink_tokens)
        if window_chunks is None:
            if max_chunks is not None:
                raise ValueError(f"{_NAME}: max_chunks sizes a windowed cache; without a "
                                 "window give capacity (tokens) instead")
            if capacity is None:
                raise ValueError(f"{_NAME}: without a window every key stays visible, so the "
                                 "cache needs capacity (the tokens the stream may reach)")
            check_positive_int(_NAME, "capacity", capacity)
            pinned = 0  # nothing is ever evicted, so nothing needs pinning
        else:
            if capacity is not None:
                raise ValueError(f"{_NAME}: capacity is for window_chunks=None; a windowed "
                                 "cache is sized by max_chunks (chunks per push)")
            max_chunks = 1 if max_chunks is None else max_chunks
            check_positive_int(_NAME, "max_chunks", max_chunks)
            pinned = math.ceil(sink_tokens / chunk_size)
            capacity = (pinned + window_chunks - 1 + max_chunks) * chunk_size
        self.chunk_size, self.window_chunks = chunk_size, window_chunks
        self.sink_tokens = sink_tokens
        self.max_chunks, self.pinned_chunks, self.keep_graph = max_chunks, pinned, keep_graph
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0   # stream tokens pushed
        self.evicted = 0  # chunks dropped from between the pinned ones and the retained ones

    # ------------------------------------------------------------------ the layout

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def filled(self) -> int:
        """Buffer rows in use: the stream's tokens less the evicted chunks'."""
        return self.length - self.evicted * self.chunk_size

    @property
    def closed(self) -> bool:
        """Whether the stream ended in a partial chunk (no further push)."""
        return self.length % self.chunk_size != 0

    @property
    def nbytes(self) -> int:
        """Bytes of the storage the cache holds (keys and values)."""
        return sum(t.untyped_storage().nbytes() for t in (self.keys, self.values))

    def positions(self) -> Tensor:
        """int64 (filled,): the stream position of each buffer row in use."""
        rows = torch.arange(self.filled, device=self.device)
        return rows + (rows >= self.pinned_chunks * self.chunk_size) * (
            self.evicted * self.chunk_size)

    # ------------------------------------------------------------------ pushes

    def _to_evict(self) -> int:
        """Chunks the next push no longer sees: those before ``f - W + 1`` past the pinned
        ones, ``f`` the first new chunk."""
        if self.window_chunks is None:
            return 0
        first_new = self.length // self.chunk_size
        start = max(self.pinned_chunks, first_new - self.window_chunks + 1)
        return start - self.pinned_chunks - self.evicted

    def check_push(self, batch: int, n: int, device: torch.device | None = None) -> None:
        """Raise, changing nothing, unless a push of ``n`` tokens of ``batch`` samples (on
        ``device``) can be appended now."""
        if self.closed:
            raise ValueError(f"{_NAME}: the stream ended in a partial chunk ({self.length} "
                             f"tokens, chunk_size {self.chunk_size}); reset() the cache "
                             "before pushing again")
        if batch != self.batch:
            raise ValueError(f"{_NAME}: a push of batch {batch} into a cache of batch "
                             f"{self.batch}")
        if n < 1:
            raise ValueError(f"{_NAME}: a push needs at least 1 token, got {n}")
        if self.window_chunks is not None and n > self.max_chunks * self.chunk_size:
            raise ValueError(f"{_NAME}: a push of {n} tokens exceeds max_chunks "
                             f"({self.max_chunks}) chunks of {self.chunk_size}; build the "
                             "cache with a larger max_chunks")
        end = self.filled - self._to_evict() * self.chunk_size + n
        if end > self.capacity:
            raise ValueError(f"{_NAME}: a push of {n} tokens after {self.length} exceeds the "
                             f"capacity of {self.capacity} tokens")
        if device is not None and torch.device(device) != self.device:
            raise ValueError(f"{_NAME}: a push on {device} into a cache on {self.device}")

    def _check_rows(self, name: str, t: Tensor) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{_NAME}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4 or t.shape[1] != self.num_kv_heads or t.shape[3] != self.head_dim:
            raise ValueError(f"{_NAME}: {name} must be (batch, num_kv_heads "
                             f"{self.num_kv_heads}, n, head_dim {self.head_dim}), got "
                             f"{shape_of(t)}")
        if t.dtype != self.dtype:
            raise TypeError(f"{_NAME}: {name}.dtype ({t.dtype}) must be the cache's "
                            f"({self.dtype})")

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Push the next ``n`` tokens' keys and values (B, num_kv_heads, n, head_dim): ``n``
        a multiple of ``chunk_size``, or the stream's last push. Evicts what the new chunks
        no longer see, writes them, and returns the compacted keys and values (B,
        num_kv_heads, filled, head_dim), the new rows last, for
        ``chunked_causal_attention(q_new, keys, values, chunk_size, window_chunks=...,
        sink_tokens=...)``: the op's rule on them is the stream's mask (module doc).

        The returned tensors are views of the buffers, valid until the next push. When the
        new rows need a gradient (and ``keep_graph`` is off) they are a fresh concatenation
        of the cached rows and k/v instead, since a view of the buffer would neither carry
        it nor survive the next push's in-place writes."""
        n = self._check_pair(k, v)
        self._evict(self._to_evict())
        start = self.filled
        self.keys = self._write(self.keys, start, k)
        self.values = self._write(self.values, start, v)
        self.length += n
        end = start + n
        if not self.keep_graph and torch.is_grad_enabled() and (k.requires_grad
                                                                or v.requires_grad):
            return (torch.cat((self.keys[:, :, :start], k), 2),
                    torch.cat((self.values[:, :, :start], v), 2))
        return self.keys[:, :, :end], self.values[:, :, :end]

    def peek(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values :meth:`append` would return for this push, the cache left
        unchanged: for a diffusion model's denoising steps, whose queries attend to the cache
        and to their own chunk's noisy keys while only the clean chunk joins the cache
        (CausVid, Self-Forcing). A fresh concatenation: gradients reach k and v, and the
        cached rows' history only with ``keep_graph``."""
        self._check_pair(k, v)
        # The rows append keeps: the pinned ones (those filled), then those past the evicted.
        pinned = min(self.pinned_chunks * self.chunk_size, self.filled)
        start = pinned + self._to_evict() * self.chunk_size

        def kept(buf: Tensor, new: Tensor) -> Tensor:
            return torch.cat((buf[:, :, :pinned], buf[:, :, start:self.filled], new), 2)
        return kept(self.keys, k), kept(self.values, v)

    def _check_pair(self, k: Tensor, v: Tensor) -> int:
        """The rows of a push of k and v, checked (:meth:`check_push`)."""
        self._check_rows("k", k)
        self._check_rows("v", v)
        if k.shape != v.shape:
            raise ValueError(f"{_NAME}: k {shape_of(k)} and v {shape_of(v)} must have one shape")
        if v.device != k.device:
            raise ValueError(f"{_NAME}: v is on {v.device} but k is on {k.device}")
        self.check_push(k.shape[0], k.shape[2], k.device)
        return k.shape[2]

    def _write(self, buf: Tensor, start: int, rows: Tensor) -> Tensor:
        """``buf`` with ``rows`` at rows [start, start + n): in place and detached, or, with
        ``keep_graph``, a new tensor that keeps both histories."""
        if self.keep_graph:
            return buf.slice_scatter(rows, 2, start, start + rows.shape[2])
        with torch.no_grad():
            buf[:, :, start:start + rows.shape[2]].copy_(rows)
        return buf

    def _evict(self, chunks: int) -> None:
        """Drop the ``chunks`` oldest retained chunks: move the rest down to follow the
        pinned ones."""
        if chunks <= 0:
            return
        dst = self.pinned_chunks * self.chunk_size
        shift = chunks * self.chunk_size
        for name in ("keys", "values"):
            buf = getattr(self, name)
            if self.keep_graph:
                buf = self._write(buf, dst, buf[:, :, dst + shift:self.filled])
            else:
                # Pieces as long as the shift: each piece's source and destination are
                # disjoint, and ascending order reads every row before it is overwritten.
                for a in range(dst, self.filled - shift, shift):
                    b = min(a + shift, self.filled - shift)
                    self._write(buf, a, buf[:, :, a + shift:b + shift])
            setattr(self, name, buf)
        self.evicted += chunks

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Start a new stream (the buffers are kept; their rows are overwritten)."""
        self.length = self.evicted = 0
        if self.keep_graph:
            self.keys, self.values = self.keys.detach(), self.values.detach()

    def state_dict(self) -> dict:
        """The stream's state: ``length``, ``evicted`` and copies of the rows in use,
        ``keys``/``values`` (B, num_kv_heads, filled, head_dim), detached."""
        end = self.filled
        return {"length": self.length, "evicted": self.evicted,
                "keys": self.keys[:, :, :end].detach().clone(),
                "values": self.values[:, :, :end].detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` of a cache built alike (rows copied in place)."""
        length, evicted = state["length"], state["evicted"]
        filled = length - evicted * self.chunk_size
        for name in ("keys", "values"):
            rows = state[name]
            self._check_rows(name, rows)
            if rows.shape[0] != self.batch or rows.shape[2] != filled or filled > self.capacity:
                raise ValueError(f"{_NAME}: state {name} {shape_of(rows)} does not fit: batch "
                                 f"{self.batch}, and length {length} with {evicted} evicted "
                                 f"chunks needs {filled} rows (capacity {self.capacity})")
        self.reset()
        for name in ("keys", "values"):
            setattr(self, name, self._write(getattr(self, name), 0,
                                            state[name].to(self.device)))
        self.length, self.evicted = length, evicted

    def __repr__(self) -> str:
        return (f"{_NAME}(batch={self.batch}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, chunk_size={self.chunk_size}, "
                f"window_chunks={self.window_chunks}, sink_tokens={self.sink_tokens}, "
                f"capacity={self.capacity}, length={self.length}, filled={self.filled}, "
                f"dtype={self.dtype}, keep_graph={self.keep_graph})")


def check_rule(owner: str, window_chunks, sink_tokens) -> None:
    """The family's window and sinks: a positive int or None, a non-negative int."""
    if window_chunks is not None:
        check_positive_int(owner, "window_chunks", window_chunks)
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"{owner}: sink_tokens must be a non-negative int, got "
                         f"{sink_tokens!r}")
