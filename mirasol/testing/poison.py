"""NaN-poisoning of fresh buffers: inside ``poison_allocations()``, ``torch.empty`` and
``torch.empty_like`` return tensors filled with NaN (floating) or the dtype's max
(integer), so an output element a kernel forgets to write shows up as NaN instead of as
whatever the allocator left there (often zeros, which can pass a test by luck)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(torch.iinfo(t.dtype).max)


@contextlib.contextmanager
def poison_allocations() -> Iterator[None]:
    empty, empty_like = torch.empty, torch.empty_like
    torch.empty = lambda *a, **kw: _poisoned(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: _poisoned(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like
