"""What every op shares: its dispatch record (:class:`Op`), the registry behind
:func:`explain`, and the one read of packed segments' bounds whose maxima forward and
backward launch with.

Every op is one chain, in its own file::

    check(args) -> Call          argument checks (shapes, dtypes, devices; no value read)
    Op.choose(backend, call)     backend choice against the declarations (_backends)
    segment_maxima (packed)      value checks of cu_seqlens, one host read -> CPU ints
    custom op fwd / bwd + fake   lengths' value checks (padded) and the backend's math
    <Name>Function               autograd: saves what the backward needs, the maxima included
    functional                   check -> choose -> reference, or Function.apply

A new op writes its checks, its declarations (``standard_backends(*its limits)``), its
torch and triton bodies and the chain; nothing here changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from mirasol.ops._backends import (BackendSpec, Call, Explanation, choose_backend,
                                   explain_call)
from mirasol.ops._checks import Packed, check_values


@dataclass(frozen=True)
class Op:
    """One op's dispatch: its name, its backends' declarations (in auto's order) and its
    argument checks, which take the functional's arguments (all but ``backend``) and
    return the :class:`Call` the declarations are checked against."""

    name: str
    backends: Mapping[str, BackendSpec]
    check: Callable[..., Call]

    def choose(self, backend: str, call: Call) -> str:
        return choose_backend(self.name, backend, self.backends, call)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op


def explain(op: str | Callable, *args, **kwargs) -> Explanation:
    """For one concrete call of ``op`` (its name or the functional itself, then the
    arguments you would pass it, ``backend=`` included or ``"auto"``): the backend it
    would run on and every reason each backend refuses it. Runs the op's argument checks
    (bad arguments raise as the op would), reads no tensor values, launches nothing.

    >>> print(mirasol.explain("token_pool", x, logits, cu_seqlens=cu))  # doctest: +SKIP
    """
    name = op if isinstance(op, str) else op.__name__
    if name not in OPS:
        raise ValueError(f"explain: unknown op {name!r}; known: {sorted(OPS)}")
    record = OPS[name]
    backend = kwargs.pop("backend", "auto")
    return explain_call(name, record.backends, record.check(*args, **kwargs), backend)


def _host_ints(values: Sequence[int]) -> Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


@torch.library.custom_op("mirasol::segment_maxima", mutates_args=())
def _segment_maxima(op: str, cu_seqlens_q: Tensor, total_q: int, max_seqlen_q: int | None,
                    cu_seqlens_k: Tensor | None, total_k: int, max_seqlen_k: int | None,
                    queries_within_keys: bool = False) -> Tensor:
    suffixes = ("",) if cu_seqlens_k is None else ("_q", "_k")
    given = zip(suffixes, (cu_seqlens_q, cu_seqlens_k), (total_q, total_k),
                (max_seqlen_q, max_seqlen_k))
    return _host_ints(check_values(op, *(Packed(f"cu_seqlens{s}", cu, total, m,
                                                f"max_seqlen{s}")
                                         for s, cu, total, m in given),
                                   queries_within_keys=queries_within_keys))


@_segment_maxima.register_fake
def _(op, cu_seqlens_q, total_q, max_seqlen_q, cu_seqlens_k, total_k, max_seqlen_k,
      queries_within_keys=False):
    return torch.empty(1 if cu_seqlens_k is None else 2, dtype=torch.int64, device="cpu")


def segment_maxima(op: str, cu_seqlens_q: Tensor, total_q: int, max_seqlen_q: int | None = None,
                   cu_seqlens_k: Tensor | None = None, total_k: int = 0,
                   max_seqlen_k: int | None = None,
                   queries_within_keys: bool = False) -> Tensor:
    """Checks packed segments' bounds (``cu_seqlens``, or the pair ``cu_seqlens_q/_k``
    with their ``max_seqlen``s; ``queries_within_keys``: no query segment longer than its
    key segment) in one host read and returns the longest segments as a CPU int64 tensor:
    what the kernels' grid needs, forward and backward, read there without a device sync.
    A custom op, so torch.compile keeps the read out of the graph; every fast path passes
    its result to the forward custom op, so no graph drops it."""
    return torch.ops.mirasol.segment_maxima(op, cu_seqlens_q, total_q, max_seqlen_q,
                                            cu_seqlens_k, total_k, max_seqlen_k,
                                            queries_within_keys)


def maxima_or(maxima: Tensor | None, *shape_bounds: int) -> list[int]:
    """The grid bounds: the forward's maxima of packed segments, else the padded shapes."""
    return list(shape_bounds) if maxima is None else maxima.tolist()
