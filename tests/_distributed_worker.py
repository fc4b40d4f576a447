"""One rank of tests/test_distributed.py (under torchrun, gloo): each case's output and
gradients from a context-parallel mode (ulysses_attention, chunk_sharded_attention) on
this rank's shard, against one process's on the whole sequence, by the parity rule (the
single-process op in the same dtype is the reference, in float64 the oracle); then the
refusals, which must raise on every rank and leave none waiting. Exits non-zero on the
first failure."""

from __future__ import annotations

import functools
import os

import torch
import torch.distributed as dist

from mirasol import chunked_causal_attention, cross_attention, cross_attention_padded
from mirasol.distributed import (ChunkShards, chunk_sharded_attention,
                                 chunk_sharded_cross_attention, ulysses_attention)
from mirasol.testing import assert_parity, parity_report


def _shard(x: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    n = x.shape[dim] // world
    return x.narrow(dim, rank * n, n)


def check(name, whole, parallel, split, shapes, split_kv=None):
    """``whole(q, k, v)`` on the whole tensors (in fp32 and fp64) and ``parallel`` on this
    rank's shards (``split`` of each; of k and v, ``split_kv`` if given); outputs and
    gradients compared on this rank's shard."""
    splits = (split, split_kv or split, split_kv or split)
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grad_out = None
    runs = {}
    for label, dtype in (("reference", torch.float32), ("oracle", torch.float64)):
        xs = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
        out = whole(*xs)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
        out.backward(grad_out.to(dtype))
        runs[label] = [split(out), *(f(x.grad) for f, x in zip(splits, xs))]
    shards = [f(x).float().requires_grad_() for f, x in zip(splits, inputs)]
    out = parallel(*shards)
    out.backward(split(grad_out).float())
    actual = [out, *(x.grad for x in shards)]
    assert_parity([parity_report(f"{name} {label}", a, r, o, is_grad=i > 0)
                   for i, (label, a, r, o) in enumerate(zip(
                       ("out", "dq", "dk", "dv"), actual, runs["reference"], runs["oracle"]))])


def check_ulysses(name, op, shapes, dim, kwargs, rank, world):
    """op through ulysses_attention, every tensor sharded contiguously along ``dim``."""
    check(f"ulysses: {name}", lambda *xs: op(*xs, **kwargs),
          lambda *xs: ulysses_attention(op, *xs, **kwargs),
          lambda x: _shard(x, dim, rank, world), shapes)


def check_chunks(name, shards, shapes, rule, rank, exchanges=("gather", "ring")):
    """chunked_causal_attention through chunk_sharded_attention on ``shards``, by each
    exchange (the ring: without a window only)."""
    cu = None
    if len(shapes[0]) == 3:
        cu = torch.tensor([0, *shards.seqlens], dtype=torch.int32).cumsum(0).int()
    for exchange in exchanges:
        if exchange == "ring" and rule.get("window_chunks") is not None:
            continue
        check(f"chunk shards ({exchange}): {name}",
              lambda *xs: chunked_causal_attention(*xs, shards.chunk_size, cu_seqlens_q=cu,
                                                   cu_seqlens_k=cu,
                                                   teacher_forcing=shards.teacher_forcing,
                                                   **rule),
              functools.partial(chunk_sharded_attention, shards=shards, exchange=exchange,
                                **rule),
              lambda x: shards.shard(x, rank), shapes)


def check_nan(name, whole, parallel, split, shapes, token):
    """A NaN in the keys at ``token`` reaches exactly the outputs it reaches in one
    process, and no other."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(s, generator=g) for s in shapes)
    k[..., token, 0] = float("nan")
    expected = whole(q, k, v).isnan()
    assert expected.any() and not expected.all(), f"{name}: a NaN case that tests nothing"
    got = parallel(*(split(x) for x in (q, k, v))).isnan()
    assert torch.equal(got, split(expected)), \
        f"{name}: the NaN reaches other outputs than in one process"


def refused(name, call, match, rank):
    try:
        call()
    except (ValueError, RuntimeError) as e:
        assert match in str(e), (name, str(e))
    else:
        raise AssertionError(f"{name}: rank {rank} was not refused")
    dist.barrier()  # every rank got here: the refusal left none inside a collective


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    H, H_kv, D, N = 2 * world, world, 16, 32 * world  # grouped-query heads, 2:1
    B = 2
    padded = ((B, H, N, D), (B, H_kv, N, D), (B, H_kv, N, D))
    lengths = torch.tensor([N, N - 21], dtype=torch.int32)
    check_ulysses("chunked, lengths", chunked_causal_attention, padded, 2,
                  dict(chunk_size=12, lengths=lengths), rank, world)
    check_ulysses("window + sinks", chunked_causal_attention, padded, 2,
                  dict(chunk_size=8, window_chunks=2, sink_tokens=5), rank, world)
    check_ulysses("teacher forcing", chunked_causal_attention, padded, 2,
                  dict(chunk_size=8, teacher_forcing=True, window_chunks=3), rank, world)
    # Packed: three sequences whose boundaries fall inside the ranks' shards.
    total = 48 * world
    cu = torch.tensor([0, 13, total - 30, total], dtype=torch.int32)
    packed = ((total, H, D), (total, H_kv, D), (total, H_kv, D))
    check_ulysses("packed, straddling", chunked_causal_attention, packed, 0,
                  dict(chunk_size=8, window_chunks=2, sink_tokens=3, cu_seqlens_q=cu,
                       cu_seqlens_k=cu), rank, world)
    check_ulysses("packed cross-attention", cross_attention, packed, 0,
                  dict(cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True), rank, world)
    cross = ((B, H, 8 * world, D), (B, H_kv, N, D), (B, H_kv, N, D))
    check_ulysses("cross-attention, key lengths", cross_attention_padded, cross, 2,
                  dict(k_lengths=torch.tensor([N, 7], dtype=torch.int32)), rank, world)

    # Chunk shards: 4 world chunks of 8 (zigzag: two runs each), then counts that do not
    # divide (a partial last chunk; fewer chunks than ranks), windows with sinks inside and
    # before the window, packed sequences straddling ranks.
    zigzag = ChunkShards(8, (N,), world)
    check_chunks("chunk-causal, zigzag", zigzag, padded, {}, rank)
    check_chunks("window + sinks, zigzag", zigzag, padded,
                 dict(window_chunks=2, sink_tokens=5), rank)
    check_chunks("window + sinks past a chunk, contiguous",
                 ChunkShards(8, (N,), world, "contiguous"), padded,
                 dict(window_chunks=3, sink_tokens=11), rank)
    odd = N + 5
    check_chunks("unequal chunk counts", ChunkShards(8, (odd,), world),
                 ((1, H, odd, D), (1, H_kv, odd, D), (1, H_kv, odd, D)),
                 dict(window_chunks=2, sink_tokens=3), rank)
    check_chunks("fewer chunks than ranks", ChunkShards(8, (19,), world),
                 ((B, H, 19, D), (B, H_kv, 19, D), (B, H_kv, 19, D)), {}, rank)
    check_chunks("packed, straddling", ChunkShards.packed(cu, 8, world), packed,
                 dict(window_chunks=2, sink_tokens=3), rank)
    check_chunks("packed, straddling, no window", ChunkShards.packed(cu, 8, world), packed,
                 {}, rank)
    # Cross-attention: each rank's queries (a contiguous share here) against keys sharded by
    # chunks (zigzag, a partial last chunk), with key lengths.
    Lk = N + 3
    keys = ChunkShards(8, (Lk,), world)
    k_lengths = torch.tensor([Lk, 13], dtype=torch.int32)
    check("chunk shards: cross-attention, key lengths",
          functools.partial(cross_attention_padded, k_lengths=k_lengths),
          functools.partial(chunk_sharded_cross_attention, shards=keys, k_lengths=k_lengths),
          lambda x: _shard(x, 2, rank, world),
          ((B, H, 6 * world, D), (B, H_kv, Lk, D), (B, H_kv, Lk, D)),
          split_kv=lambda x: keys.shard(x, rank))

    for L, batch in ((N, B), (N + 5, 1)):  # teacher forcing: 2L tokens, L clean then noisy
        forcing = ChunkShards(8, (2 * L,), world, teacher_forcing=True)
        shapes = ((batch, H, 2 * L, D), (batch, H_kv, 2 * L, D), (batch, H_kv, 2 * L, D))
        check_chunks(f"teacher forcing, L={L}", forcing, shapes, {}, rank)
        check_chunks(f"teacher forcing, window + sinks, L={L}", forcing, shapes,
                     dict(window_chunks=3, sink_tokens=11), rank)
    check_chunks("unequal chunk counts, no window, contiguous",
                 ChunkShards(8, (odd,), world, "contiguous"),
                 ((1, H, odd, D), (1, H_kv, odd, D), (1, H_kv, odd, D)), {}, rank)

    # NaN in a key of a middle chunk (and of the first chunk, past the sinks): under the
    # window seen by its own and the next chunk's queries only, without one (the ring) by
    # every later chunk's.
    for rule, tokens in ((dict(window_chunks=2, sink_tokens=5), (3 * 8 + 2, 6)),
                         ({}, (3 * 8 + 2,))):
        for token in tokens:
            check_nan(f"chunk shards, {rule}, NaN at {token}", functools.partial(
                chunked_causal_attention, chunk_size=8, **rule), functools.partial(
                chunk_sharded_attention, shards=zigzag, **rule),
                lambda x: zigzag.shard(x, rank), padded, token)
            check_nan(f"ulysses, {rule}, NaN at {token}", functools.partial(
                chunked_causal_attention, chunk_size=8, **rule), functools.partial(
                ulysses_attention, chunked_causal_attention, chunk_size=8, **rule),
                lambda x: _shard(x, 2, rank, world), padded, token)

    q, k = torch.randn(B, H, 8, D), torch.randn(B, H_kv, 8, D)
    if world > 1:
        odd = torch.randn(B, world + 1, 8, D)
        refused("heads", lambda: ulysses_attention(chunked_causal_attention, odd, odd, odd, 4),
                f"q has {world + 1} heads", rank)
        mine = k.double() if rank == world - 1 else k
        refused("dtypes", lambda: ulysses_attention(chunked_causal_attention, q, mine, mine, 4),
                "disagree on k.dtype", rank)
        longer = torch.randn(B, H, 8 + rank, D)
        refused("shards", lambda: ulysses_attention(chunked_causal_attention, longer, longer,
                                                    longer, 4), "disagree on q.shape[2]", rank)
        shards = ChunkShards(4, (8 * world,), world)
        refused("chunk shards: dtypes", lambda: chunk_sharded_attention(q, mine, mine, shards),
                "disagree on k.dtype", rank)
        wrong = torch.randn(B, H, 8 + (rank == 0), D)
        refused("chunk shards: rows", lambda: chunk_sharded_attention(wrong, wrong, wrong,
                                                                      shards),
                "q holds [9, ", rank)
        other = ChunkShards(4, (8 * world,), world + 1)
        refused("chunk shards: world", lambda: chunk_sharded_attention(q, k, k, other),
                f"shards are for {world + 1} ranks", rank)
        refused("chunk shards: ring with a window", lambda: chunk_sharded_attention(
            q, k, k, shards, window_chunks=2, exchange="ring"), "exchange='ring' is for", rank)
        theirs = other if rank == 0 else shards
        refused("chunk shards: layouts", lambda: chunk_sharded_attention(q, k, k, theirs),
                "disagree on shards.world", rank)
    dist.barrier()  # no rank exits while another is still in a collective


if __name__ == "__main__":
    main()
    # Every check passed on every rank (the barrier above). Leave without the interpreter's
    # teardown, where gloo can abort a 4-process run on 2 loaded cores ("terminate called
    # without an active exception": 3 of 49 runs; where probed, all four ranks had passed).
    os._exit(0)
