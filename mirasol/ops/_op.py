"""What every op shares: its dispatch record (:class:`Op`), the registry behind
:func:`explain`, and the host-side ints a forward hands its backward.

Every op is one chain, in its own file::

    check(args) -> Call          argument checks (shapes, dtypes, devices; no value read)
    Op.choose(backend, call)     backend choice against the declarations (_backends)
    custom op fwd / bwd + fake   value checks (one host read) and the backend's math
    <Name>Function               autograd: saves what the backward needs, host ints included
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


def host_ints(values: Sequence[int]) -> Tensor:
    """Ints a forward custom op computed (e.g. the longest segments, from its one value
    read) as a CPU tensor output, so the backward reads them without a device sync and
    torch.compile traces them as a tensor."""
    return torch.tensor(list(values), dtype=torch.int64)


def fake_host_ints(n: int) -> Tensor:
    return torch.empty(n, dtype=torch.int64, device="cpu")
