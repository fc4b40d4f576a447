"""Context parallelism: one long sequence across processes, on torch.distributed.

**Ulysses** (DeepSpeed-Ulysses, Jacobs et al. 2023). Each of the ``R`` ranks of a group
holds a contiguous shard of the sequence with every head. One all-to-all per input gives
each rank the *whole* sequence for ``1/R`` of the heads (query heads and key/value heads
alike, so grouped-query heads stay with their key/value head); the op runs unchanged on
it, so every mask of the block-causal family and cross-attention work as in one process;
one all-to-all gives each rank its shard of the output with every head back. Autograd runs
the same exchanges backwards (functional collectives). Each of q, k, v and the output
crosses the group once; ``(R - 1) / R`` of it leaves the rank.

**Chunk shards.** Each rank holds whole chunks of every sequence, assigned by
:class:`ChunkShards` (zigzag: a run from the front and one from the back of each
sequence, cut so that early, cheap chunks and late, dear ones even out; or contiguous),
and every head. A rank is sent exactly the keys and values its queries' masks can see
(earlier chunks, the window, the sinks of their own sequence), never others:

* *gather*: one all-to-all brings them all, each once, and the op runs once on this
  rank's queries as a packed batch, one segment per run of chunks against the keys that
  run sees; autograd returns the keys' gradients through the same exchange reversed;
* *ring* (no window, where those keys can be most of the sequence): ``R - 1`` steps, each
  bringing one other rank's keys, which every query of a run sees whole (its own chunks
  are on its rank): one unmasked call merged into the output by log-sum-exp, then
  dropped; the backward receives them again and sends their gradients back. A rank holds
  its own tokens only.

Ulysses serves every op and mask with ``1/R`` of the attention's memory, the heads
divided among the ranks. Chunk shards need no head count divisible by ``R`` and, under a
window, send little beyond its halo (docs/distributed.md compares them).

A group of size 1 is the plain op. Shapes, dtypes and devices are agreed across the group
in one small all-gather before any exchange, so a rank that disagrees raises the same
named error on every rank and none is left waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import _functional_collectives as _fc
from torch.distributed._functional_collectives import all_to_all_single_autograd

from mirasol.ops import _pieces
from mirasol.ops._checks import attention_call, default_scale
from mirasol.ops.chunked_attention import OP as CHUNKED, chunked_causal_attention
from mirasol.ops.cross_attention import PACKED as CROSS, cross_attention_padded

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def ulysses_attention(attention: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor,
                      *args, group: dist.ProcessGroup | None = None, **kwargs) -> Tensor:
    """``attention(q, k, v, *args, **kwargs)`` over the sequence sharded across ``group``
    (default: the whole world), e.g. ``ulysses_attention(chunked_causal_attention, q, k, v,
    256, window_chunks=4)``.

    Args:
        attention: a mirasol op taking q, k, v in the layout below
            (``chunked_causal_attention``, ``cross_attention_padded``, ``cross_attention``).
        q: this rank's shard: padded (B, H, n_q, D), rank r holding positions
            ``[r n_q, (r + 1) n_q)`` of every sample; or packed (t_q, H, D), rank r holding
            tokens ``[r t_q, (r + 1) t_q)`` of the packed batch. Every rank holds as many.
        k, v: this rank's shard of the keys and values, laid out like q: (B, H_kv, n_k, D)
            or (t_k, H_kv, D). ``H`` and ``H_kv`` divisible by the group's size.
        args, kwargs: the op's, describing the **whole** sequence (``lengths``,
            ``cu_seqlens_q``/``_k``, ``max_seqlen_*``: as one process would pass them).

    Returns:
        This rank's shard of the output, laid out like q.
    """
    world = _agree_ulysses(group, q, k, v)
    if world == 1:
        return attention(q, k, v, *args, **kwargs)
    group = dist.group.WORLD if group is None else group
    seq = 2 if q.dim() == 4 else 0  # the sequence dim: padded (B, H, N, D), packed (T, H, D)
    q, k, v = (_sequence_to_heads(x, seq, world, group) for x in (q, k, v))
    return _heads_to_sequence(attention(q, k, v, *args, **kwargs), seq, world, group)


def _sequence_to_heads(x: Tensor, seq: int, world: int, group) -> Tensor:
    # Head group i goes to rank i; what arrives from rank r is its sequence shard, so the
    # shards joined in rank order are the whole sequence.
    parts = x.unflatten(1, (world, x.shape[1] // world)).movedim(1, 0).contiguous()
    received = all_to_all_single_autograd(parts, None, None, group)
    return received.movedim(0, seq).flatten(seq, seq + 1)


def _heads_to_sequence(x: Tensor, seq: int, world: int, group) -> Tensor:
    # Sequence shard r goes to rank r; what arrives from rank i is head group i.
    parts = x.unflatten(seq, (world, x.shape[seq] // world)).movedim(seq, 0).contiguous()
    received = all_to_all_single_autograd(parts, None, None, group)
    return received.movedim(0, 1).flatten(1, 2)


BALANCES = ("zigzag", "contiguous")
EXCHANGES = ("auto", "gather", "ring")


@dataclass(frozen=True)
class ChunkShards:
    """Which rank holds which chunks: ``world`` ranks sharing sequences of ``seqlens``
    tokens cut into chunks of ``chunk_size`` (the last of a sequence may be shorter).

    ``balance="zigzag"`` gives rank ``r`` one run of each sequence's chunks from the front
    and one from the back, the ``r``-th from either end: under the chunk-causal mask,
    chunk ``c`` costs ``c + 1`` chunks of keys, and the cuts are placed by that cost, so
    the ranks' work is equal when ``2 world`` divides the chunk count and within 10% from
    ``8 world`` chunks (``16 world`` at 8 ranks; :meth:`visible_pairs`). ``"contiguous"`` gives
    rank ``r`` the ``r``-th of ``world`` runs: fewer keys to send, the last rank doing
    about ``2 world - 1`` times the first's work without a window; under a window the work
    per chunk is flat and contiguous shards are balanced too.

    A rank's tokens are its chunks' in the sequences' order (padded: positions along N,
    every sample alike; packed: rows of the packed batch): :meth:`shard` takes them from a
    whole tensor, :meth:`unshard` puts every rank's back. ``teacher_forcing``: one length
    ``2L``, ``L`` clean then ``L`` noisy tokens; the chunks of ``L`` are assigned, a rank
    holding clean and noisy chunk ``c`` alike.
    """

    chunk_size: int
    seqlens: tuple[int, ...]
    world: int
    balance: str = "zigzag"
    teacher_forcing: bool = False

    def __post_init__(self):
        for name, value in (("chunk_size", self.chunk_size), ("world", self.world)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChunkShards: {name} must be a positive int, got {value!r}")
        lens = tuple(int(n) for n in (self.seqlens.tolist() if isinstance(self.seqlens, Tensor)
                                      else self.seqlens))
        if not lens or min(lens) < 0:
            raise ValueError(f"ChunkShards: seqlens must be one or more non-negative "
                             f"lengths, got {self.seqlens!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"ChunkShards: balance must be one of {BALANCES}, got "
                             f"{self.balance!r}")
        if self.teacher_forcing and (len(lens) != 1 or lens[0] % 2):
            raise ValueError(f"ChunkShards: teacher_forcing takes one sequence length 2L (L "
                             f"clean then L noisy tokens, a padded batch), got seqlens "
                             f"{lens}")
        object.__setattr__(self, "seqlens", lens)

    @classmethod
    def packed(cls, cu_seqlens: Tensor | Sequence[int], chunk_size: int, world: int,
               balance: str = "zigzag") -> "ChunkShards":
        """The shards of a packed batch whose segments ``cu_seqlens`` bounds."""
        cu = np.asarray(cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else cu_seqlens)
        return cls(chunk_size, tuple(np.diff(cu).tolist()), world, balance)

    @cached_property
    def _chunked(self) -> tuple[int, ...]:
        """The length each sequence's chunks cut: the sequence, or teacher forcing's half."""
        return tuple(n // 2 if self.teacher_forcing else n for n in self.seqlens)

    @cached_property
    def _owner(self) -> list[np.ndarray]:
        """Per sequence, each chunk's rank."""
        return [self._zigzag(n) if self.balance == "zigzag" else self._contiguous(n)
                for n in self._chunked]

    def _contiguous(self, n: int) -> np.ndarray:
        owner = np.empty(-(-n // self.chunk_size), dtype=np.int64)
        for r, run in enumerate(np.array_split(np.arange(owner.size), self.world)):
            owner[run] = r
        return owner

    def _zigzag(self, n: int) -> np.ndarray:
        # Chunk c of C costs rows(c) x (keys up to its end) under the chunk-causal mask, so
        # c and C - 1 - c cost alike in all (up to a short last chunk). Rank r takes
        # chunks [f_r, f_r+1) from the front and [C - g_r+1, C - g_r) from the back, the
        # last rank the middle: each pair of cuts, the front one within 3 chunks of the
        # pairs' even split, brings ranks 0..r nearest to (r + 1) / world of the cost. A
        # front chunk costs less than a back one, so together they cut finely, and the
        # cuts' errors do not add up.
        cs, chunks = self.chunk_size, -(-n // self.chunk_size)
        ends = np.minimum(np.arange(1, chunks + 1) * cs, n)
        cost = (ends - np.arange(chunks) * cs) * ends
        front = np.concatenate([[0], np.cumsum(cost)])
        back = np.concatenate([[0], np.cumsum(cost[::-1])])
        owner = np.empty(chunks, dtype=np.int64)
        f = g = 0
        for r in range(self.world - 1):
            target = front[-1] * (r + 1) / self.world
            even = round((r + 1) * chunks / (2 * self.world))  # the pairs' even cut
            fs = np.arange(max(f, even - 3), min(even + 3, chunks - g) + 1)[:, None]
            gs = np.arange(g, chunks + 1)[None, :]
            miss = np.abs(front[fs] + back[gs] - target) + np.abs(fs - even) * 1e-9
            miss = np.where(fs + gs <= chunks, miss, np.inf)
            i, j = np.unravel_index(np.argmin(miss), miss.shape)
            f_next, g_next = int(fs[i, 0]), int(gs[0, j])
            owner[f:f_next] = r
            owner[chunks - g_next:chunks - g] = r
            f, g = f_next, g_next
        owner[f:chunks - g] = self.world - 1
        return owner

    @cached_property
    def _tokens(self) -> np.ndarray:
        """Each token's rank, in the sequences' order."""
        halves = 2 if self.teacher_forcing else 1
        return np.concatenate([np.tile(np.repeat(o, self.chunk_size)[:n], halves)
                               for o, n in zip(self._owner, self._chunked)])

    @cached_property
    def _local(self) -> np.ndarray:
        """Each token's row in its rank's shard."""
        local = np.empty_like(self._tokens)
        for r in range(self.world):
            mine = self._tokens == r
            local[mine] = np.arange(int(mine.sum()))
        return local

    def tokens(self, rank: int) -> Tensor:
        """Rank ``rank``'s tokens (int64 indices into the sequences' order), in order."""
        return torch.from_numpy(np.flatnonzero(self._tokens == rank))

    @cached_property
    def counts(self) -> tuple[int, ...]:
        """How many tokens each rank holds (per sample of a padded batch)."""
        return tuple(np.bincount(self._tokens, minlength=self.world).tolist())

    def count(self, rank: int) -> int:
        """How many tokens rank ``rank`` holds (per sample of a padded batch)."""
        return self.counts[rank]

    def shard(self, x: Tensor, rank: int, dim: int | None = None) -> Tensor:
        """Rank ``rank``'s tokens of a whole tensor along ``dim``; by default padded (B, H,
        N, D) along N, or packed (T, ...) along T."""
        dim = _sequence_dim(x) if dim is None else dim
        return x.index_select(dim, self.tokens(rank).to(x.device))

    def unshard(self, shards: Sequence[Tensor], dim: int | None = None) -> Tensor:
        """The whole tensor from every rank's shard (rank order), as :meth:`shard` took
        them."""
        dim = _sequence_dim(shards[0]) if dim is None else dim
        order = torch.cat([self.tokens(r) for r in range(self.world)]).to(shards[0].device)
        return torch.cat(list(shards), dim).index_select(dim, torch.argsort(order))

    def _runs(self, rank: int) -> list[tuple[int, int, int]]:
        """(sequence, first chunk, end chunk) of each run of the rank's chunks, in order."""
        runs = []
        for s, owner in enumerate(self._owner):
            mine = np.flatnonzero(owner == rank)
            for part in np.split(mine, np.flatnonzero(np.diff(mine) > 1) + 1):
                if part.size:
                    runs.append((s, int(part[0]), int(part[-1]) + 1))
        return runs

    def _keys(self, s: int, a: int, b: int, window: int | None, sinks: int) -> np.ndarray:
        """The keys that queries of chunks ``[a, b)`` of sequence ``s`` see, as one packed
        segment of token indices (-1: a zero row no query sees) whose chunks line up with
        the sequence's: the window's chunks ``[c, b)`` and, where they lie before ``c``,
        the sinks, padded to whole chunks. Shifting chunks by ``c - sink chunks`` keeps the
        rule's chunk differences; the padding lies ``window`` chunks or more behind every
        query, so nothing sees it."""
        n, cs = self._chunked[s], self.chunk_size
        start = sum(self.seqlens[:s])
        c = 0 if window is None else max(0, a - window + 1)
        sink_chunks = -(-min(sinks, n) // cs)
        if c < sink_chunks:  # the window reaches the sinks: chunks [0, c) are all sinks
            c = 0
        window_keys = np.arange(c * cs, min(b * cs, n)) + start
        if not c or not sinks:
            return window_keys
        sink_keys = np.arange(sink_chunks * cs)
        sink_keys = np.where(sink_keys < min(sinks, n), sink_keys + start, -1)
        return np.concatenate([sink_keys, window_keys])

    def _segments(self, rank: int, window: int | None, sinks: int
                  ) -> list[tuple[int, np.ndarray]]:
        """The gather's packed call on ``rank``: (query rows, key token indices) of each
        segment, in the order of its rows. A run of chunks against :meth:`_keys`; under
        teacher forcing the runs are the clean rows, then each noisy chunk ``x`` is a
        segment of its own: the clean keys it sees (those a clean chunk ``x`` would see,
        but its own) and its noisy chunk, last, so that the plain rule gives each its
        window."""
        cs, runs = self.chunk_size, self._runs(rank)
        segments = [(min(b * cs, self._chunked[s]) - a * cs, self._keys(s, a, b, window, sinks))
                    for s, a, b in runs]
        if self.teacher_forcing:
            (n,) = self._chunked
            for x in (x for _, a, b in runs for x in range(a, b)):
                noisy = n + np.arange(x * cs, min((x + 1) * cs, n))
                segments.append((noisy.size, np.concatenate([self._keys(0, x, x, window,
                                                                        sinks), noisy])))
        return segments

    def visible_pairs(self, window_chunks: int | None = None, sink_tokens: int = 0) -> list[int]:
        """Per rank, the (query, key) pairs its queries' masks see: its share of the work."""
        cs, pairs = self.chunk_size, [0] * self.world
        for n, owner in zip(self._chunked, self._owner):
            for c, rank in enumerate(owner.tolist()):
                rows = min(cs, n - c * cs)
                first = 0 if window_chunks is None else max(0, c - window_chunks + 1)
                # The window's earlier chunks and the sinks before them; then its own chunk
                # (teacher forcing's noisy rows: their own noisy chunk).
                earlier = (c - first) * cs + min(sink_tokens, n, first * cs)
                pairs[rank] += rows * (earlier + rows) * (2 if self.teacher_forcing else 1)
        return pairs


@dataclass(frozen=True, eq=False)
class ContextShard:
    """This rank's part of sequences sharded across ``group`` (default: the whole world) by
    ``shards``: what a model's layers need to run on its tokens alone and to gather the
    whole sequence where a layer reads all of it."""

    shards: ChunkShards
    group: dist.ProcessGroup | None = None

    @cached_property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @cached_property
    def positions(self) -> Tensor:
        """This rank's tokens' positions in their sequence (one sequence: ``seqlens ==
        (N,)``), for rotary embeddings."""
        if len(self.shards.seqlens) != 1:
            raise ValueError("ContextShard.positions: shards of one sequence length only")
        return self.shards.tokens(self.rank)

    def take(self, x: Tensor, dim: int) -> Tensor:
        """This rank's tokens of the whole ``x`` along ``dim``."""
        return self.shards.shard(x, self.rank, dim)

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """The whole tensor from every rank's ``x`` (this rank's tokens along ``dim``), on
        every rank: one all-gather (autograd: the backward sums the ranks' gradients into
        each shard), shards of unequal counts padded to the longest for it."""
        world, counts = self.shards.world, self.shards.counts
        most = max(counts)
        if x.shape[dim] < most:
            pad = list(x.shape)
            pad[dim] = most - x.shape[dim]
            x = torch.cat([x, x.new_zeros(pad)], dim)
        # Newer torch names it all_gather_single_autograd (and deprecates the other name).
        gather = getattr(_fc, "all_gather_single_autograd", None) or \
            _fc.all_gather_tensor_autograd
        every = gather(x.movedim(dim, 0).contiguous(), 0,
                       dist.group.WORLD if self.group is None else self.group).movedim(0, dim)
        return self.shards.unshard([every.narrow(dim, r * most, counts[r])
                                    for r in range(world)], dim)


@dataclass(frozen=True)
class _Plan:
    """What every rank sends, receives and computes (host data, the same on every rank).

    Per rank: ``send[r]`` its own rows (local indices) for each destination in rank
    order, ``send_splits[r]`` how many to each, ``recv_splits[r]`` how many from each;
    the packed call's ``cu_q[r]`` (its runs, in its local rows) and ``cu_k[r]`` (their
    key segments), and ``gather[r]``: each key row's index into its local rows, then the
    received ones, then one zero row."""

    send: list[np.ndarray]
    send_splits: list[list[int]]
    recv_splits: list[list[int]]
    cu_q: list[list[int]]
    cu_k: list[list[int]]
    gather: list[np.ndarray]


@lru_cache(maxsize=32)
def _plan(shards: ChunkShards, window: int | None, sinks: int) -> _Plan:
    world, owner, local = shards.world, shards._tokens, shards._local
    segments = [shards._segments(r, window, sinks) for r in range(world)]
    # needs[r][src]: the tokens rank r reads from src != r, each once, in order.
    needs = []
    for r in range(world):
        wanted = _union([keys for _, keys in segments[r]])
        wanted = wanted[wanted >= 0]
        needs.append([wanted[owner[wanted] == src] if src != r else wanted[:0]
                      for src in range(world)])
    send, send_splits, recv_splits, cu_q, cu_k, gather = [], [], [], [], [], []
    for r in range(world):
        to = [needs[dst][r] for dst in range(world)]
        send.append(local[_cat(to)])
        send_splits.append([t.size for t in to])
        recv_splits.append([t.size for t in needs[r]])
        received = _cat(needs[r])
        where = np.full(owner.size + 1, -1, dtype=np.int64)  # token (or -1) -> source row
        mine = np.flatnonzero(owner == r)
        where[mine] = local[mine]
        where[received] = mine.size + np.arange(received.size)
        where[-1] = mine.size + received.size
        gather.append(where[_cat([keys for _, keys in segments[r]])])
        cu_q.append(np.cumsum([0] + [rows for rows, _ in segments[r]]).tolist())
        cu_k.append(np.cumsum([0] + [keys.size for _, keys in segments[r]]).tolist())
    return _Plan(send, send_splits, recv_splits, cu_q, cu_k, gather)


@dataclass(frozen=True)
class _Step:
    """One step of the ring for one rank: ``send`` its rows that the rank ``step`` places
    after it sees, ``recv`` rows from the rank ``step`` places before it; ``rows`` its
    query rows of the runs that see some of them, with ``cu_q`` / ``cu_k`` the runs'
    segments and ``keys`` each segment's rows of what it received."""
    send: np.ndarray
    recv: int
    rows: np.ndarray
    cu_q: list[int]
    cu_k: list[int]
    keys: np.ndarray


@dataclass(frozen=True)
class _Ring:
    """A rank's part of the ring without a window: its runs against its own keys (each
    run's packed segment: its sequence's earlier chunks held here, whole chunks, then the
    run's own; teacher forcing: all its clean then noisy tokens, as one sequence of whole
    chunks), then one :class:`_Step` per other rank."""
    cu_q: list[int]
    cu_k: list[int]
    keys: np.ndarray
    steps: list[_Step]
    teacher_forcing: bool = False


@lru_cache(maxsize=32)
def _ring(shards: ChunkShards) -> list[_Ring]:
    """Every rank's ring (host data, the same on every rank). Without a window, a run
    sees every earlier chunk of its sequence whole and its own chunks chunk-causally; its
    own chunks are on its rank, so whatever another rank sends it is seen whole."""
    world, cs, owner, local = shards.world, shards.chunk_size, shards._tokens, shards._local
    halves = 2 if shards.teacher_forcing else 1
    seq = np.repeat(np.arange(len(shards.seqlens)), shards.seqlens)
    # Each token's chunk of its half and its half (teacher forcing: 0 clean, 1 noisy).
    chunk = np.concatenate([np.tile(np.arange(n) // cs, halves) for n in shards._chunked])
    half = np.concatenate([np.repeat(np.arange(halves), n) for n in shards._chunked])
    runs = [shards._runs(r) for r in range(world)]

    def before(src: int, s: int, a: int) -> np.ndarray:
        """src's (clean) tokens of sequence s in chunks before a: what a run from chunk a
        sees of src, whole (global indices, in order)."""
        return np.flatnonzero((owner == src) & (seq == s) & (chunk < a) & (half == 0))

    def run_rows(r: int, s: int, a: int, b: int) -> np.ndarray:
        """The run's rows (local, in order; teacher forcing: clean then noisy)."""
        return local[np.flatnonzero((seq == s) & (chunk >= a) & (chunk < b))]

    rings = []
    for r in range(world):
        if shards.teacher_forcing:
            own = [np.flatnonzero(owner == r)]
        else:
            own = [np.concatenate([before(r, s, a), np.flatnonzero((seq == s) & (chunk >= a)
                                                                   & (chunk < b))])
                   for s, a, b in runs[r]]
        steps = []
        for step in range(1, world):
            src, dst = (r - step) % world, (r + step) % world
            send = _union([before(r, s, a) for s, a, _ in runs[dst]])
            seen = [(i, before(src, s, a)) for i, (s, a, _) in enumerate(runs[r])]
            seen = [(i, keys) for i, keys in seen if keys.size]
            received = _union([keys for _, keys in seen])
            rows = [run_rows(r, *runs[r][i]) for i, _ in seen]
            steps.append(_Step(local[send], received.size, _cat(rows),
                               np.cumsum([0] + [t.size for t in rows]).tolist(),
                               np.cumsum([0] + [k.size for _, k in seen]).tolist(),
                               np.searchsorted(received, _cat([k for _, k in seen]))))
        cu_q = [0] + [run_rows(r, *run).size for run in runs[r]]
        rings.append(_Ring(np.cumsum(cu_q).tolist(),
                           np.cumsum([0] + [o.size for o in own]).tolist(),
                           local[_cat(own)], steps, shards.teacher_forcing))
    return rings


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, np.int64)


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    return np.unique(_cat(arrays))


def _token_rows(x: Tensor) -> Tensor:
    """A rank's q, k or v as token-major rows (n, B, h, D): padded (B, h, n, D), or packed
    (t, h, D) as one sample."""
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(2, 0, 1, 3)


def _untoken_rows(x: Tensor, like: Tensor) -> Tensor:
    """The inverse of :func:`_token_rows`, to ``like``'s layout."""
    return x.squeeze(1) if like.dim() == 3 else x.permute(1, 2, 0, 3)


def _padded(x: Tensor) -> Tensor:
    """Token-major rows (n, B, h, D) as the padded (B, h, n, D) view."""
    return x.permute(1, 2, 0, 3)


def _viewed(x: Tensor) -> Tensor:
    """A padded (B, h, n, ...) output as the ops' packed view (1, h, B n, ...), sample-major."""
    return x.transpose(0, 1).flatten(1, 2).unsqueeze(0)


def _unviewed(x: Tensor, batch: int) -> Tensor:
    """The inverse of :func:`_viewed`."""
    return x.squeeze(0).unflatten(1, (batch, -1)).transpose(0, 1)


def _op_view(x: Tensor) -> Tensor:
    """Token-major rows (m, B, h, D) as the ops' packed 4-D view (1, h, B m, D)."""
    return _viewed(_padded(x))


def _token_major(x: Tensor, batch: int) -> Tensor:
    """The inverse of :func:`_op_view`."""
    return _unviewed(x, batch).permute(2, 0, 1, 3)


def _exchange(x: Tensor, send: np.ndarray | None, recv: int, to: int, frm: int,
              group) -> Tensor:
    """Rows ``x[send]`` (all of ``x`` when ``send`` is None) to rank ``to``, ``recv`` rows
    from rank ``frm``: one all-to-all whose other splits are empty."""
    world = dist.get_world_size(group)
    out_x = x if send is None else x.index_select(0, torch.from_numpy(send).to(x.device))
    splits_in, splits_out = [0] * world, [0] * world
    splits_in[to], splits_out[frm] = out_x.shape[0], recv
    received = x.new_empty(recv, *x.shape[1:])
    dist.all_to_all_single(received, out_x.contiguous(), splits_out, splits_in, group=group)
    return received


class _RingFunction(torch.autograd.Function):
    """Chunk shards without a window, one other rank's keys at a time (token-major q, k, v:
    (n, B, h, D)). The forward merges each step's partial attention into (out, lse) by
    their log-sum-exp; the backward receives the keys again, step by step, runs each
    piece's backward from the merged (out, lse), and returns the keys' gradients to their
    owners. Saved: this rank's q, k, v, out and lse only."""

    @staticmethod
    def forward(ctx, q, k, v, ring: _Ring, group, chunk: int, scale: float,
                backends: tuple[str, str]):
        batch, n = q.shape[1], q.shape[0]
        acc = torch.promote_types(q.dtype, torch.float32)
        # The calls' bounds, built once from host data for the forward and the backward.
        local = _local_call(ring, batch, q.device) if n else None
        remote = [_remote_call(step, batch, n, q.device) if step.rows.size else None
                  for step in ring.steps]
        out = q.new_zeros(1, q.shape[2], 0, q.shape[3], dtype=acc)
        lse = q.new_zeros(1, q.shape[2], 0, dtype=acc)
        if n:  # (a rank without chunks still takes part in every exchange)
            if ring.teacher_forcing:  # its clean then noisy tokens: one padded sequence
                out, lse = (_viewed(t) for t in torch.ops.mirasol.chunked_attention_fwd(
                    *(_padded(x) for x in (q, k, v)), *local, chunk, None, 0, True, scale,
                    backends[0]))
            else:
                out, lse = torch.ops.mirasol.chunked_attention_fwd(
                    _op_view(q), *(_op_view(_rows(x, ring.keys)) for x in (k, v)), *local,
                    chunk, None, 0, False, scale, backends[0])
        out = out.to(acc)
        kv = torch.stack([k, v], 2)
        for (step, (to, frm)), at in zip(_ring_steps(ring, group), remote):
            received = _exchange(kv, step.send, step.recv, to, frm, group)
            if at is None:
                continue
            rows, call = at
            o, l = torch.ops.mirasol.cross_attention_fwd(
                _op_view(_rows(q, step.rows)), *(_op_view(x) for x in
                                                 _rows(received, step.keys).unbind(2)),
                *call, False, scale, backends[1])
            out[:, :, rows], lse[:, :, rows] = _pieces.merge(out[:, :, rows], lse[:, :, rows],
                                                             o.to(acc), l)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rest = (ring, group, chunk, scale, backends, local, remote)
        return _token_major(out, batch)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        ring, group, chunk, scale, backends, local, remote = ctx.rest
        batch, n = q.shape[1], q.shape[0]
        acc = torch.promote_types(q.dtype, torch.float32)
        do = _op_view(grad)
        dq = torch.zeros_like(do, dtype=acc)
        dkv = torch.zeros(*k.shape[:2], 2, *k.shape[2:], dtype=acc, device=k.device)
        if n and ring.teacher_forcing:
            dq_own, dk_own, dv_own = torch.ops.mirasol.chunked_attention_bwd(
                _unviewed(do, batch), *(_padded(x) for x in (q, k, v)),
                _unviewed(out, batch), _unviewed(lse, batch), *local, chunk, None, 0, True,
                scale, backends[0])
            dq += _viewed(dq_own)
            dkv[:, :, 0] += dk_own.permute(2, 0, 1, 3)
            dkv[:, :, 1] += dv_own.permute(2, 0, 1, 3)
        elif n:
            dq_own, dk_own, dv_own = torch.ops.mirasol.chunked_attention_bwd(
                do, _op_view(q), *(_op_view(_rows(x, ring.keys)) for x in (k, v)), out, lse,
                *local, chunk, None, 0, False, scale, backends[0])
            dq += dq_own
            keys = torch.from_numpy(ring.keys).to(k.device)
            dkv[:, :, 0].index_add_(0, keys, _token_major(dk_own, batch).to(acc))
            dkv[:, :, 1].index_add_(0, keys, _token_major(dv_own, batch).to(acc))
        kv = torch.stack([k, v], 2)
        for (step, (to, frm)), at in zip(_ring_steps(ring, group), remote):
            received = _exchange(kv, step.send, step.recv, to, frm, group)
            d_received = torch.zeros_like(received, dtype=acc)
            if at is not None:
                rows, call = at
                ks, vs = _rows(received, step.keys).unbind(2)
                dqs, dks, dvs = torch.ops.mirasol.cross_attention_bwd(
                    do[:, :, rows], _op_view(_rows(q, step.rows)), _op_view(ks), _op_view(vs),
                    out[:, :, rows], lse[:, :, rows], *call, False, scale, backends[1])
                dq[:, :, rows] += dqs.to(acc)
                index = torch.from_numpy(step.keys).to(k.device)
                d_received[:, :, 0].index_add_(0, index, _token_major(dks, batch).to(acc))
                d_received[:, :, 1].index_add_(0, index, _token_major(dvs, batch).to(acc))
            # The keys' gradients go back the way the keys came.
            back = _exchange(d_received, None, step.send.size, frm, to, group)
            dkv.index_add_(0, torch.from_numpy(step.send).to(k.device), back)
        dk, dv = dkv.to(k.dtype).unbind(2)
        return _token_major(dq.to(q.dtype), batch), dk, dv, *(None,) * 5


def _rows(x: Tensor, index: np.ndarray) -> Tensor:
    return x.index_select(0, torch.from_numpy(index).to(x.device))


def _ring_steps(ring: _Ring, group):
    """Each step with the ranks this one sends to and receives from."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    for i, step in enumerate(ring.steps, 1):
        yield step, ((rank + i) % world, (rank - i) % world)


def _local_call(ring: _Ring, batch: int, device) -> tuple:
    """(lengths, cu_q, cu_k, maxima) of the runs against this rank's own keys, every
    sample (teacher forcing's one padded sequence: none of them)."""
    if ring.teacher_forcing:
        return None, None, None, None
    return None, *_segment_bounds(ring.cu_q, ring.cu_k, batch, device)


def _remote_call(step: _Step, batch: int, n: int, device) -> tuple[Tensor, tuple]:
    """The step's rows in the ops' view of all this rank's rows, and (cu_q, cu_k, k_lengths,
    maxima) of its runs against what it received, every sample."""
    rows = torch.from_numpy((np.arange(batch)[:, None] * n + step.rows[None]).ravel())
    cu_q, cu_k, maxima = _segment_bounds(step.cu_q, step.cu_k, batch, device)
    return rows.to(device), (cu_q, cu_k, None, maxima)


def _segment_bounds(cu_q: list[int], cu_k: list[int], batch: int, device) -> tuple:
    """cu_seqlens_q/_k of ``batch`` copies of the segments and their maxima: the longest
    segments, from these host bounds (no read of the device tensors)."""
    maxima = torch.tensor([int(np.diff(cu).max()) for cu in (cu_q, cu_k)], dtype=torch.int64)
    return (*(_repeated_bounds(cu, batch, device) for cu in (cu_q, cu_k)), maxima)


def chunk_sharded_attention(q: Tensor, k: Tensor, v: Tensor, shards: ChunkShards, *,
                            window_chunks: int | None = None, sink_tokens: int = 0,
                            scale: float | None = None, backend: str = "auto",
                            exchange: str = "auto",
                            group: dist.ProcessGroup | None = None) -> Tensor:
    """:func:`~mirasol.chunked_causal_attention` with the sequences' chunks sharded across
    ``group`` (default: the whole world) as ``shards`` assigns them; each rank receives
    the keys and values its queries see and runs the op on every head.

    Args:
        q: this rank's tokens (``shards.shard(whole, rank)``): padded (B, H, n_r, D), the
            sequences of ``shards.seqlens == (N,)``, every sample alike; or packed
            (t_r, H, D), the segments of ``shards.seqlens``.
        k, v: this rank's tokens of the keys and values, (B, H_kv, n_r, D) or
            (t_r, H_kv, D): self-attention, ``H % H_kv == 0``.
        shards: the assignment, the same on every rank, ``shards.world`` the group's size.
        window_chunks, sink_tokens, scale, backend: as the op's, for the whole sequences.
        exchange: ``"gather"``: one all-to-all brings every key the rank's queries see, and
            the op runs once (autograd returns the keys' gradients). ``"ring"`` (no window):
            one other rank's keys at a time, merged by log-sum-exp and dropped, sent again
            in the backward, so a rank holds its own tokens and one other rank's: about
            ``1/R`` of the memory. ``"auto"``: ring without a window, gather with one (the
            window's halo is small).

    Returns:
        This rank's tokens of the output, laid out like q. Forward and backward equal the
        op's on the whole sequences, under the parity rule.

    Teacher forcing follows ``shards.teacher_forcing`` (a padded batch). Lengths and
    cross-attention are :func:`ulysses_attention`'s (lengths: or pack the batch).
    """
    caller = "chunk_sharded_attention"
    if not isinstance(shards, ChunkShards):
        raise TypeError(f"{caller}: shards must be a ChunkShards, got {type(shards).__name__}")
    if exchange not in EXCHANGES:
        raise ValueError(f"{caller}: exchange must be one of {EXCHANGES}, got {exchange!r}")
    if exchange == "ring" and window_chunks is not None:
        raise ValueError(f"{caller}: exchange='ring' is for attention without a window "
                         f"(window_chunks={window_chunks}); a window's keys come in one "
                         "gather (exchange='gather' or 'auto')")
    if shards.teacher_forcing and q.dim() != 4:
        raise ValueError(f"{caller}: teacher forcing takes a padded batch (B, H, 2L, D), got "
                         f"q {tuple(q.shape)}")
    seq = _sequence_dim(q)
    rows = {f"{name} rows": x.shape[seq] if x.dim() == q.dim() else -1
            for name, x in (("q", q), ("k", k), ("v", v))}
    world, every = _agree(caller, group, q.device,
                          _tensor_fields(q, k, v, skip=seq) | _layout(shards), rows)
    if q.dim() == 4 and len(shards.seqlens) != 1:
        raise ValueError(f"{caller}: padded q (B, H, n, D) takes shards of one sequence "
                         f"length N (every sample alike), got seqlens of "
                         f"{len(shards.seqlens)}; pack the batch for several")
    _check_rows(caller, shards, world, every, rows)
    rule = dict(window_chunks=window_chunks, sink_tokens=sink_tokens, scale=scale,
                backend=backend)
    if world == 1:
        cu = None if seq else torch.tensor(np.cumsum([0, *shards.seqlens]), dtype=torch.int32,
                                           device=q.device)
        return chunked_causal_attention(q, k, v, shards.chunk_size, cu_seqlens_q=cu,
                                        cu_seqlens_k=cu, teacher_forcing=shards.teacher_forcing,
                                        **rule)
    group = dist.group.WORLD if group is None else group
    if exchange == "ring" or (exchange == "auto" and window_chunks is None):
        return _ring_attention(q, k, v, shards, scale, backend, group)
    rank = dist.get_rank(group)
    plan = _plan(shards, window_chunks, sink_tokens)
    # k and v travel together, token-major: (n, B, 2, H_kv, D), B = 1 when packed.
    kv = torch.stack([_token_rows(k), _token_rows(v)], 2)
    sent = kv.index_select(0, torch.from_numpy(plan.send[rank]).to(q.device))
    received = all_to_all_single_autograd(sent.contiguous(), plan.recv_splits[rank],
                                          plan.send_splits[rank], group)
    if len(plan.cu_q[rank]) == 1:
        # No chunk here: q is empty, and so is the output. It stays joined to q and to the
        # exchange (received is empty too: no queries need no keys), so that this rank's
        # backward joins the other ranks' in the exchange's and returns empty gradients.
        return q + received.sum()
    source = torch.cat([kv, received, kv.new_zeros(1, *kv.shape[1:])])
    keys = source.index_select(0, torch.from_numpy(plan.gather[rank]).to(q.device))
    batch = kv.shape[1]
    # One packed call: every sample's runs, sample-major, each against its key segment.
    q_call, k_call, v_call = (x.transpose(0, 1).flatten(0, 1)
                              for x in (_token_rows(q), *keys.unbind(2)))
    cu_q, cu_k = (_repeated_bounds(cu, batch, q.device)
                  for cu in (plan.cu_q[rank], plan.cu_k[rank]))
    out = chunked_causal_attention(q_call, k_call, v_call, shards.chunk_size,
                                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **rule)
    return _untoken_rows(out.unflatten(0, (batch, -1)).transpose(0, 1), q)


def chunk_sharded_cross_attention(q: Tensor, k: Tensor, v: Tensor, shards: ChunkShards, *,
                                  k_lengths: Tensor | None = None, scale: float | None = None,
                                  backend: str = "auto",
                                  group: dist.ProcessGroup | None = None) -> Tensor:
    """:func:`~mirasol.cross_attention_padded` with the keys' chunks sharded across
    ``group`` as ``shards`` assigns them (e.g. a video's latents) and each rank's own
    queries (any rows: its shard of the text, its questions). Every query sees every key,
    so the keys and values are gathered, in one all-gather, and the op runs on this rank's
    queries; autograd sums every rank's gradients into each rank's keys.

    Args:
        q: this rank's queries, (B, H, Lq_r, D) (``Lq_r`` may differ between ranks).
        k, v: this rank's keys and values, ``shards.shard(whole, rank)`` of (B, H_kv, Lk, D),
            ``shards.seqlens == (Lk,)``.
        k_lengths, scale, backend: as the op's, for the whole keys.

    Returns:
        (B, H, Lq_r, D): this rank's queries' output.
    """
    caller = "chunk_sharded_cross_attention"
    if any(x.dim() != 4 for x in (q, k, v)):
        raise ValueError(f"{caller}: q, k, v must be padded (B, H, L, D), got "
                         f"{[tuple(x.shape) for x in (q, k, v)]}")
    if not isinstance(shards, ChunkShards) or len(shards.seqlens) != 1 \
            or shards.teacher_forcing:
        raise TypeError(f"{caller}: shards must be a ChunkShards of one key length (Lk,), "
                        f"got {shards!r}")
    world, every = _agree(caller, group, q.device, _tensor_fields(q, k, v, skip=2)
                          | _layout(shards),
                          {"k rows": k.shape[2] if k.dim() == 4 else -1,
                           "v rows": v.shape[2] if v.dim() == 4 else -1})
    _check_rows(caller, shards, world, every, ("k rows", "v rows"))
    if world > 1:
        kv = ContextShard(shards, group).gather(torch.stack([k, v], 2), 3)
        k, v = kv.unbind(2)
    return cross_attention_padded(q, k, v, k_lengths=k_lengths, scale=scale, backend=backend)


def _ring_attention(q: Tensor, k: Tensor, v: Tensor, shards: ChunkShards, scale, backend: str,
                    group) -> Tensor:
    call = attention_call(q, k, v)
    backends = (CHUNKED.choose(backend, call), CROSS.choose(backend, call))
    if "reference" in backends:
        raise ValueError("chunk_sharded_attention: exchange='ring' runs the triton or torch "
                         "backend (the reference has no log-sum-exp to merge by)")
    ring = _ring(shards)[dist.get_rank(group)]
    out = _RingFunction.apply(*(_token_rows(x) for x in (q, k, v)), ring, group,
                              shards.chunk_size, default_scale(q, scale), backends)
    return _untoken_rows(out, q)


def _layout(shards: ChunkShards) -> dict[str, int]:
    """The shards as fields the ranks must agree on."""
    return {"shards.chunk_size": shards.chunk_size, "shards.world": shards.world,
            "shards.balance": BALANCES.index(shards.balance),
            "shards.teacher_forcing": int(shards.teacher_forcing),
            "shards.seqlens": hash(shards.seqlens) % (1 << 62)}


def _check_rows(caller: str, shards: ChunkShards, world: int, every: list[dict[str, int]],
                names) -> None:
    """The group is the shards' and every rank holds the rows they give it."""
    if world != shards.world:
        raise ValueError(f"{caller}: shards are for {shards.world} ranks but the group has "
                         f"{world}")
    for name in names:
        held = [e[name] for e in every]
        if held != list(shards.counts):
            raise ValueError(f"{caller}: {name.split()[0]} holds {held} rows on ranks "
                             f"0..{world - 1}, but the shards give {list(shards.counts)}: "
                             "pass each rank shards.shard(whole, rank)")


def _repeated_bounds(cu: list[int], times: int, device) -> Tensor:
    """``cu_seqlens`` of ``times`` copies of the segments ``cu`` bounds, one after another."""
    bounds = [0] + [i * cu[-1] + c for i in range(times) for c in cu[1:]]
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def _sequence_dim(x: Tensor) -> int:
    return 2 if x.dim() == 4 else 0


def _tensor_fields(q: Tensor, k: Tensor, v: Tensor, skip: int | None = None) -> dict[str, int]:
    """Layout, shapes (but dim ``skip``), dtypes and device types of q, k, v, as ints."""
    fields = {"q.dim()": q.dim()}
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = list(x.shape) + [0] * (4 - x.dim())
        fields |= {f"{name}.shape[{i}]": s for i, s in enumerate(shape) if i != skip}
        fields[f"{name}.dtype"] = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else -1
        fields[f"{name}.device"] = int(x.device.type == "cuda")
    return fields


def _agree(caller: str, group, device: torch.device, same: dict[str, int],
           mine: dict[str, int] | None = None) -> tuple[int, list[dict[str, int]]]:
    """The group's size and every rank's ``same | mine``, gathered in one small all-gather,
    once every rank has the same values of ``same``; else the same ValueError on every
    rank. ``mine`` are the fields the ranks may differ in, for the caller to check."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{caller}: torch.distributed is not initialized (group): call "
                           "torch.distributed.init_process_group first (torchrun sets up "
                           "its environment)")
    world = dist.get_world_size(group)
    fields = same | (mine or {})
    every = [fields]
    if world > 1:
        local = torch.tensor(list(fields.values()), dtype=torch.int64, device=device)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        every = [dict(zip(fields, t.tolist())) for t in gathered]
    for name in same:
        values = [e[name] for e in every]
        if len(set(values)) > 1:
            raise ValueError(f"{caller}: the ranks disagree on {name}: "
                             f"{_decode(name, values)} on ranks 0..{world - 1}; every rank "
                             "must hold its shard of the same problem")
    return world, every


def _agree_ulysses(group, q: Tensor, k: Tensor, v: Tensor) -> int:
    """The group's size, once every rank has the same layout, shapes, dtypes and device
    type, and the heads divide among the ranks; else the same ValueError on every rank."""
    world, _ = _agree("ulysses_attention", group, q.device, _tensor_fields(q, k, v))
    if q.dim() not in (3, 4):
        raise ValueError(f"ulysses_attention: q must be padded (B, H, N, D) or packed "
                         f"(T, H, D), got shape {tuple(q.shape)}")
    for name, x in (("q", q), ("k", k)):
        if x.dim() != q.dim() or x.shape[1] % world:
            raise ValueError(f"ulysses_attention: {name} has {x.shape[1]} heads (shape "
                             f"{tuple(x.shape)}), which {world} ranks cannot share: Ulysses "
                             "gives each rank 1/R of the heads and of the key/value heads")
    return world


def _decode(name: str, values: list[int]) -> list:
    if name.endswith(".dtype"):
        return [str(_DTYPES[i]).removeprefix("torch.") if i >= 0 else "other" for i in values]
    if name.endswith(".device"):
        return ["cuda" if i else "cpu" for i in values]
    return values
