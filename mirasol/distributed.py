"""Context parallelism: one long sequence across processes, on torch.distributed.

**Ulysses** (DeepSpeed-Ulysses, Jacobs et al. 2023). Each of the ``R`` ranks of a group
holds a contiguous shard of the sequence with every head. One all-to-all per input gives
each rank the *whole* sequence for ``1/R`` of the heads (query heads and key/value heads
alike, so grouped-query heads stay with their key/value head); the op runs unchanged on
it, so every mask of the block-causal family and cross-attention work as in one process;
one all-to-all gives each rank its shard of the output with every head back. Autograd runs
the same exchanges backwards (functional collectives). Each of q, k, v and the output
crosses the group once; ``(R - 1) / R`` of it leaves the rank.

**Chunk shards** (gathered K/V). Each rank holds whole chunks of every sequence, assigned
by :class:`ChunkShards` (zigzag: the chunks cut into ``2R`` runs, rank ``r`` holding runs
``r`` and ``2R - 1 - r``, so each rank has as many early, cheap chunks as late, dear ones;
or contiguous). One all-to-all gives each rank exactly the keys and values its queries'
masks can see (earlier chunks, the window, the sinks of their own sequence), each once;
the op then runs once on this rank's queries as a packed batch, one segment per run of
chunks against the keys that run sees, with every head. Autograd sends the keys' and
values' gradients back to their owners through the same exchange reversed.

Ulysses keeps ``1/R`` of the attention's memory on each rank and serves every op and mask;
chunk shards keep every head on each rank (no limit from the head count) and send only
visible keys: little beyond a window's halo under a window, up to the sequence's keys to
the rank holding the last chunks without one (docs/distributed.md compares them).

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

from mirasol.ops.chunked_attention import chunked_causal_attention

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


@dataclass(frozen=True)
class ChunkShards:
    """Which rank holds which chunks: ``world`` ranks sharing sequences of ``seqlens``
    tokens cut into chunks of ``chunk_size`` (the last of a sequence may be shorter).

    ``balance="zigzag"`` cuts each sequence's chunks into ``2 world`` runs of (nearly)
    equal counts and gives rank ``r`` runs ``r`` and ``2 world - 1 - r``: under the
    chunk-causal mask, chunk ``c`` costs ``c + 1`` chunks of keys, and the pairs of runs
    cost alike (equal when ``2 world`` divides the chunk count). ``"contiguous"`` gives
    rank ``r`` the ``r``-th of ``world`` runs: fewer keys to send, the last rank doing
    about ``2 world - 1`` times the first's work without a window; under a window the work
    per chunk is flat and contiguous shards are balanced too.

    A rank's tokens are its chunks' in the sequences' order (padded: positions along N,
    every sample alike; packed: rows of the packed batch): :meth:`shard` takes them from a
    whole tensor, :meth:`unshard` puts every rank's back.
    """

    chunk_size: int
    seqlens: tuple[int, ...]
    world: int
    balance: str = "zigzag"

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
        object.__setattr__(self, "seqlens", lens)

    @classmethod
    def packed(cls, cu_seqlens: Tensor | Sequence[int], chunk_size: int, world: int,
               balance: str = "zigzag") -> "ChunkShards":
        """The shards of a packed batch whose segments ``cu_seqlens`` bounds."""
        cu = np.asarray(cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else cu_seqlens)
        return cls(chunk_size, tuple(np.diff(cu).tolist()), world, balance)

    @cached_property
    def _owner(self) -> list[np.ndarray]:
        """Per sequence, each chunk's rank."""
        return [self._zigzag(n) if self.balance == "zigzag" else self._contiguous(n)
                for n in self.seqlens]

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
        return np.concatenate([np.repeat(o, self.chunk_size)[:n]
                               for o, n in zip(self._owner, self.seqlens)])

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
        n, cs = self.seqlens[s], self.chunk_size
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

    def visible_pairs(self, window_chunks: int | None = None, sink_tokens: int = 0) -> list[int]:
        """Per rank, the (query, key) pairs its queries' masks see: its share of the work."""
        cs, pairs = self.chunk_size, [0] * self.world
        for n, owner in zip(self.seqlens, self._owner):
            for c, rank in enumerate(owner.tolist()):
                rows = min(cs, n - c * cs)
                first = 0 if window_chunks is None else max(0, c - window_chunks + 1)
                keys = c * cs + rows - first * cs + min(sink_tokens, n, first * cs)
                pairs[rank] += rows * keys
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

    def sent_rows(self) -> list[int]:
        """Rows each rank sends to others (each of k and v)."""
        return [int(sum(splits)) for splits in self.send_splits]


@lru_cache(maxsize=32)
def _plan(shards: ChunkShards, window: int | None, sinks: int) -> _Plan:
    world, owner = shards.world, shards._tokens
    local = np.empty_like(owner)  # each token's row in its rank's shard
    for r in range(world):
        mine = owner == r
        local[mine] = np.arange(int(mine.sum()))
    segments = [[(s, a, b, shards._keys(s, a, b, window, sinks)) for s, a, b in shards._runs(r)]
                for r in range(world)]
    # needs[r][src]: the tokens rank r reads from src != r, each once, in order.
    needs = []
    for r in range(world):
        keys = [k for *_, k in segments[r]]
        wanted = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
        wanted = wanted[wanted >= 0]
        needs.append([wanted[owner[wanted] == src] if src != r else wanted[:0]
                      for src in range(world)])
    send, send_splits, recv_splits, cu_q, cu_k, gather = [], [], [], [], [], []
    for r in range(world):
        to = [needs[dst][r] for dst in range(world)]
        send.append(local[np.concatenate(to)] if to else np.empty(0, np.int64))
        send_splits.append([t.size for t in to])
        recv_splits.append([t.size for t in needs[r]])
        received = np.concatenate(needs[r])
        where = np.full(owner.size + 1, -1, dtype=np.int64)  # token (or -1) -> source row
        mine = np.flatnonzero(owner == r)
        where[mine] = local[mine]
        where[received] = mine.size + np.arange(received.size)
        where[-1] = mine.size + received.size
        keys = [k for *_, k in segments[r]]
        gather.append(where[np.concatenate(keys)] if keys else np.empty(0, np.int64))
        cu_q.append(np.cumsum([0] + [min(b * shards.chunk_size, shards.seqlens[s])
                                     - a * shards.chunk_size
                                     for s, a, b, _ in segments[r]]).tolist())
        cu_k.append(np.cumsum([0] + [k.size for k in keys]).tolist())
    return _Plan(send, send_splits, recv_splits, cu_q, cu_k, gather)


def chunk_sharded_attention(q: Tensor, k: Tensor, v: Tensor, shards: ChunkShards, *,
                            window_chunks: int | None = None, sink_tokens: int = 0,
                            scale: float | None = None, backend: str = "auto",
                            group: dist.ProcessGroup | None = None) -> Tensor:
    """:func:`~mirasol.chunked_causal_attention` with the sequences' chunks sharded across
    ``group`` (default: the whole world) as ``shards`` assigns them; each rank receives
    the keys and values its queries see, once, and runs the op on every head.

    Args:
        q: this rank's tokens (``shards.shard(whole, rank)``): padded (B, H, n_r, D), the
            sequences of ``shards.seqlens == (N,)``, every sample alike; or packed
            (t_r, H, D), the segments of ``shards.seqlens``.
        k, v: this rank's tokens of the keys and values, (B, H_kv, n_r, D) or
            (t_r, H_kv, D): self-attention, ``H % H_kv == 0``.
        shards: the assignment, the same on every rank, ``shards.world`` the group's size.
        window_chunks, sink_tokens, scale, backend: as the op's, for the whole sequences.

    Returns:
        This rank's tokens of the output, laid out like q. Forward and backward equal the
        op's on the whole sequences, under the parity rule.

    Teacher forcing, ``lengths`` and cross-attention are :func:`ulysses_attention`'s
    (lengths: or pack the batch).
    """
    caller = "chunk_sharded_attention"
    if not isinstance(shards, ChunkShards):
        raise TypeError(f"{caller}: shards must be a ChunkShards, got {type(shards).__name__}")
    seq = _sequence_dim(q)
    layout = {"shards.chunk_size": shards.chunk_size, "shards.world": shards.world,
              "shards.balance": BALANCES.index(shards.balance),
              "shards.seqlens": hash(shards.seqlens) % (1 << 62)}
    rows = {f"{name} rows": x.shape[seq] if x.dim() == q.dim() else -1
            for name, x in (("q", q), ("k", k), ("v", v))}
    world, every = _agree(caller, group, q.device, _tensor_fields(q, k, v, skip=seq) | layout,
                          rows)
    if world != shards.world:
        raise ValueError(f"{caller}: shards are for {shards.world} ranks but the group has "
                         f"{world}")
    if q.dim() == 4 and len(shards.seqlens) != 1:
        raise ValueError(f"{caller}: padded q (B, H, n, D) takes shards of one sequence "
                         f"length N (every sample alike), got seqlens of "
                         f"{len(shards.seqlens)}; pack the batch for several")
    for name in rows:
        held = [e[name] for e in every]
        if held != list(shards.counts):
            raise ValueError(f"{caller}: {name.split()[0]} holds {held} rows on ranks "
                             f"0..{world - 1}, but the shards give {list(shards.counts)}: "
                             "pass each rank shards.shard(whole, rank)")
    rule = dict(window_chunks=window_chunks, sink_tokens=sink_tokens, scale=scale,
                backend=backend)
    if world == 1:
        cu = None if seq else torch.tensor(np.cumsum([0, *shards.seqlens]), dtype=torch.int32,
                                           device=q.device)
        return chunked_causal_attention(q, k, v, shards.chunk_size, cu_seqlens_q=cu,
                                        cu_seqlens_k=cu, **rule)
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    plan = _plan(shards, window_chunks, sink_tokens)
    # k and v travel together, token-major: (n, B, 2, H_kv, D), B = 1 when packed.
    kv = torch.stack([k, v], 1).unsqueeze(1) if seq == 0 else \
        torch.stack([k, v], 2).permute(3, 0, 2, 1, 4)
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
    batch = 1 if seq == 0 else q.shape[0]
    # One packed call: every sample's runs, sample-major, each against its key segment.
    k_call, v_call = (x.transpose(0, 1).flatten(0, 1) for x in keys.unbind(2))
    q_call = q if seq == 0 else q.transpose(1, 2).flatten(0, 1)
    cu_q, cu_k = (_repeated_bounds(cu, batch, q.device)
                  for cu in (plan.cu_q[rank], plan.cu_k[rank]))
    out = chunked_causal_attention(q_call, k_call, v_call, shards.chunk_size,
                                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **rule)
    return out if seq == 0 else out.unflatten(0, (batch, -1)).transpose(1, 2)


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
