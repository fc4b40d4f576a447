"""Context parallelism (mirasol.distributed): Ulysses over 1, 2 and 4 gloo processes on
CPU equals one process on the whole sequence — output and every gradient, by the parity
rule — for the block-causal family's masks (lengths; window + sinks; teacher forcing;
packed sequences whose boundaries fall inside the ranks' shards), packed and padded
cross-attention, with grouped-query heads; a refused call raises its named error on every
rank and leaves none waiting (tests/_distributed_worker.py, one rank)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from mirasol import chunked_causal_attention
from mirasol.distributed import (BALANCES, ChunkShards, _plan, _ring, chunk_sharded_attention,
                                 ulysses_attention)
from mirasol.masks import Rule

WORKER = Path(__file__).with_name("_distributed_worker.py")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_context_parallel_equals_one_process(world):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world}", str(WORKER)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_ulysses_needs_a_process_group():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        ulysses_attention(chunked_causal_attention, q, q, q, 4)


def test_chunk_sharded_attention_needs_a_process_group():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        chunk_sharded_attention(q, q, q, ChunkShards(4, (8,), 1))


def _mask_pairs(shards: ChunkShards, rule: Rule) -> list[int]:
    """Per rank, the pairs the mask itself admits for its tokens (the oracle)."""
    pairs, owner, start = [0] * shards.world, shards._tokens, 0
    for n in shards.seqlens:
        p = torch.arange(n)[:, None]
        seen = rule.admits(p, torch.arange(n)[None], n).sum(1)
        for rank in range(shards.world):
            pairs[rank] += int(seen[torch.from_numpy(owner[start:start + n] == rank)].sum())
        start += n
    return pairs


def _seen_elsewhere(shards: ChunkShards, rule: Rule, rank: int) -> list[int]:
    """The tokens of other ranks that some query of ``rank`` sees (global, sorted)."""
    owner, starts, seen = shards._tokens, np.cumsum([0, *shards.seqlens]), set()
    for s, n in enumerate(shards.seqlens):
        mine = np.flatnonzero(owner[starts[s]:starts[s] + n] == rank)
        if mine.size:
            p = torch.from_numpy(mine)[:, None]
            keys = rule.admits(p, torch.arange(n)[None], n).any(0).nonzero()[:, 0]
            seen |= {int(starts[s] + j) for j in keys if owner[starts[s] + j] != rank}
    return sorted(seen)


@settings(max_examples=80, deadline=None)
@given(world=st.integers(1, 5), chunk=st.integers(1, 9),
       seqlens=st.lists(st.integers(0, 90), min_size=1, max_size=3),
       window=st.one_of(st.none(), st.integers(1, 4)), sinks=st.integers(0, 12),
       balance=st.sampled_from(BALANCES), teacher_forcing=st.booleans())
@example(world=4, chunk=8, seqlens=[19], window=None, sinks=0, balance="zigzag",
         teacher_forcing=False)
@example(world=2, chunk=8, seqlens=[64], window=2, sinks=11, balance="contiguous",
         teacher_forcing=False)
@example(world=3, chunk=4, seqlens=[29], window=3, sinks=6, balance="zigzag",
         teacher_forcing=True)
def test_the_gather_sends_each_rank_exactly_what_its_queries_see(world, chunk, seqlens,
                                                                  window, sinks, balance,
                                                                  teacher_forcing):
    """shard/unshard round-trip over every token, visible_pairs counts what the mask
    admits, and the gather's plan sends a rank exactly the other ranks' keys that some
    query of it sees, each once (teacher forcing: 2L tokens, L clean then noisy)."""
    if teacher_forcing:
        seqlens = [2 * seqlens[0]]
    shards = ChunkShards(chunk, tuple(seqlens), world, balance, teacher_forcing)
    rule = Rule(chunk, window, sinks, teacher_forcing)
    total = sum(seqlens)
    x = torch.arange(total, dtype=torch.float32)[:, None]
    parts = [shards.shard(x, r) for r in range(world)]
    assert sum(p.shape[0] for p in parts) == total
    assert torch.equal(shards.unshard(parts), x)
    assert shards.visible_pairs(window, sinks) == _mask_pairs(shards, rule)
    plan, owner = _plan(shards, window, sinks), shards._tokens
    for rank in range(world):
        received = []
        for src in range(world):  # what src sends rank, as global token indices
            at = sum(plan.send_splits[src][:rank])
            rows = plan.send[src][at:at + plan.send_splits[src][rank]]
            received += np.flatnonzero(owner == src)[rows].tolist()
        assert sorted(received) == _seen_elsewhere(shards, rule, rank)
        assert len(set(received)) == len(received)
        assert plan.recv_splits[rank] == [plan.send_splits[src][rank] for src in range(world)]


@settings(max_examples=60, deadline=None)
@given(world=st.integers(1, 5), chunk=st.integers(1, 9),
       seqlens=st.lists(st.integers(0, 90), min_size=1, max_size=3),
       balance=st.sampled_from(BALANCES), teacher_forcing=st.booleans())
@example(world=4, chunk=8, seqlens=[19], balance="zigzag", teacher_forcing=True)
def test_the_ring_sends_each_rank_exactly_what_its_queries_see(world, chunk, seqlens, balance,
                                                               teacher_forcing):
    """Without a window: over the ring's steps each rank receives exactly the other ranks'
    keys that some query of it sees, each once, as many rows as its source sends (teacher
    forcing: 2L tokens, L clean then noisy, chunks of L assigned); visible_pairs counts
    what the mask admits."""
    if teacher_forcing:
        seqlens = [2 * seqlens[0]]
    shards = ChunkShards(chunk, tuple(seqlens), world, balance, teacher_forcing)
    rule = Rule(chunk, teacher_forcing=teacher_forcing)
    assert shards.visible_pairs() == _mask_pairs(shards, rule)
    rings, owner = _ring(shards), shards._tokens
    for rank in range(world):
        received = []
        for i, step in enumerate(rings[rank].steps, 1):
            src = (rank - i) % world
            sent = rings[src].steps[i - 1].send  # src's step i goes to (src + i) % world
            assert step.recv == sent.size
            received += np.flatnonzero(owner == src)[sent].tolist()
        assert sorted(received) == _seen_elsewhere(shards, rule, rank)
        assert len(set(received)) == len(received)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_zigzag_balances_the_chunk_causal_work(world):
    """Visible pairs per rank, max / min: equal when 2 world divides the chunk count, within
    10% from 8 world chunks on (16 world at 8 ranks), any last chunk; contiguous shards
    leave the last rank about 2 world - 1 times the first's work."""
    least = 16 if world == 8 else 8
    for chunks in range(least * world, least * world + 40):
        for short in (0, 5):
            pairs = ChunkShards(8, (8 * chunks - short,), world).visible_pairs()
            assert max(pairs) / min(pairs) <= 1.10, (chunks, short, pairs)
    pairs = ChunkShards(8, (8 * 32 * world,), world).visible_pairs()
    assert max(pairs) == min(pairs)
    pairs = ChunkShards(8, (8 * 32 * world,), world, "contiguous").visible_pairs()
    assert max(pairs) / min(pairs) > 2 * world - 1.5
