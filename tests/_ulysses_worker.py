"""One rank of tests/test_distributed.py (under torchrun, gloo): each case's output and
gradients from ulysses_attention on this rank's shard, against one process's on the
whole sequence, by the parity rule (the single-process op in the same dtype is the
reference, in float64 the oracle); then the refusals, which must raise on every rank and
leave none waiting. Exits non-zero on the first failure."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mirasol import chunked_causal_attention, cross_attention, cross_attention_padded
from mirasol.distributed import ulysses_attention
from mirasol.testing import assert_parity, parity_report


def _shard(x: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    n = x.shape[dim] // world
    return x.narrow(dim, rank * n, n)


def check(name, op, shapes, dim, kwargs, rank, world):
    """op on the whole tensors (in fp32 and fp64) and through ulysses_attention on this
    rank's shards, every tensor sharded along ``dim``; outputs and gradients compared on
    this rank's shard."""
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grad_out = None
    runs = {}
    for label, dtype in (("reference", torch.float32), ("oracle", torch.float64)):
        xs = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
        out = op(*xs, **kwargs)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
        out.backward(grad_out.to(dtype))
        runs[label] = [_shard(t, dim, rank, world) for t in (out, *(x.grad for x in xs))]
    shards = [_shard(x, dim, rank, world).float().requires_grad_() for x in inputs]
    out = ulysses_attention(op, *shards, **kwargs)
    out.backward(_shard(grad_out, dim, rank, world).float())
    actual = [out, *(x.grad for x in shards)]
    assert_parity([parity_report(f"{name} {label}", a, r, o, is_grad=i > 0)
                   for i, (label, a, r, o) in enumerate(zip(
                       ("out", "dq", "dk", "dv"), actual, runs["reference"], runs["oracle"]))])


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
    check("chunked, lengths", chunked_causal_attention, padded, 2,
          dict(chunk_size=12, lengths=lengths), rank, world)
    check("window + sinks", chunked_causal_attention, padded, 2,
          dict(chunk_size=8, window_chunks=2, sink_tokens=5), rank, world)
    check("teacher forcing", chunked_causal_attention, padded, 2,
          dict(chunk_size=8, teacher_forcing=True, window_chunks=3), rank, world)
    # Packed: three sequences whose boundaries fall inside the ranks' shards.
    total = 48 * world
    cu = torch.tensor([0, 13, total - 30, total], dtype=torch.int32)
    packed = ((total, H, D), (total, H_kv, D), (total, H_kv, D))
    check("packed, straddling", chunked_causal_attention, packed, 0,
          dict(chunk_size=8, window_chunks=2, sink_tokens=3, cu_seqlens_q=cu,
               cu_seqlens_k=cu), rank, world)
    check("packed cross-attention", cross_attention, packed, 0,
          dict(cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True), rank, world)
    cross = ((B, H, 8 * world, D), (B, H_kv, N, D), (B, H_kv, N, D))
    check("cross-attention, key lengths", cross_attention_padded, cross, 2,
          dict(k_lengths=torch.tensor([N, 7], dtype=torch.int32)), rank, world)

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
    dist.barrier()  # no rank exits while another is still in a collective


if __name__ == "__main__":
    main()
    # Every check passed on every rank (the barrier above). Leave without the interpreter's
    # teardown, where gloo can abort a 4-process run on 2 loaded cores ("terminate called
    # without an active exception": 3 of 49 runs; where probed, all four ranks had passed).
    os._exit(0)
