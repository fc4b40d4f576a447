"""Context parallelism: one long sequence across processes, on torch.distributed.

**Ulysses** (DeepSpeed-Ulysses, Jacobs et al. 2023). Each of the ``R`` ranks of a group
holds a contiguous shard of the sequence with every head. One all-to-all per input gives
each rank the *whole* sequence for ``1/R`` of the heads (query heads and key/value heads
alike, so grouped-query heads stay with their key/value head); the op runs unchanged on
it, so every mask of the block-causal family and cross-attention work as in one process;
one all-to-all gives each rank its shard of the output with every head back. Autograd runs
the same exchanges backwards (functional collectives). Each of q, k, v and the output
crosses the group once; ``(R - 1) / R`` of it leaves the rank.

A group of size 1 is the plain op. Shapes, dtypes and devices are agreed across the group
in one small all-gather before any exchange, so a rank that disagrees raises the same
named error on every rank and none is left waiting.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed._functional_collectives import all_to_all_single_autograd

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
    world = _agree(group, q, k, v)
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


def _agree(group, q: Tensor, k: Tensor, v: Tensor) -> int:
    """The group's size, once every rank has the same layout, shapes, dtypes and device
    type, and the heads divide among the ranks; else the same ValueError on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("ulysses_attention: torch.distributed is not initialized (group): "
                           "call torch.distributed.init_process_group first (torchrun sets "
                           "up its environment)")
    world = dist.get_world_size(group)
    fields = {"q.dim()": q.dim()}
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = list(x.shape) + [0] * (4 - x.dim())
        fields |= {f"{name}.shape[{i}]": s for i, s in enumerate(shape)}
        fields[f"{name}.dtype"] = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else -1
        fields[f"{name}.device"] = int(x.device.type == "cuda")
    if world > 1:
        mine = torch.tensor(list(fields.values()), dtype=torch.int64, device=q.device)
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine, group=group)
        for i, name in enumerate(fields):
            values = [int(t[i]) for t in every]
            if len(set(values)) > 1:
                raise ValueError(f"ulysses_attention: the ranks disagree on {name}: "
                                 f"{_decode(name, values)} on ranks 0..{world - 1}; every "
                                 "rank must hold an equal shard of the same problem")
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
