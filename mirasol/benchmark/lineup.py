"""What a benchmark table compares: its variants (the baseline among them) and the rivals
that could not be built here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, NamedTuple

from torch import Tensor


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[..., Tensor]
    inputs: Callable[[bool], tuple[Tensor, ...]]  # requires_grad -> the fn's arguments
    note: str = ""
    optional: bool = False  # a rival: a failure to run is recorded as skipped, not failed
    # Entered around the whole measurement (e.g. SDPA's backend choice), not per call.
    context: Callable[[], ContextManager] | None = None
    # Ours, given its maximum lengths: a host sync in a call (seen on CUDA) fails the row.
    sync_free: bool = False
    # Why the variant is timed forward only (e.g. FlexAttention has no backward on CPU); ""
    # when it runs in both modes. Its fwd+bwd row is listed as skipped with this reason.
    forward_only: str = ""


@dataclass(frozen=True)
class Skipped:
    """A variant that was not measured, and why."""
    name: str
    mode: str      # "fwd", "fwd+bwd", or "all" when it could not even be built
    reason: str    # one line
    traceback: str = ""


@dataclass(frozen=True)
class Target:
    """A ratio a table reports against a stated goal (never asserted): the median time of
    ``variant`` over that of ``against`` in ``mode``, met when at most ``at_most`` (None:
    the ratio is reported, with no goal). ``source`` says where the goal comes from."""
    mode: str
    variant: str
    against: str
    at_most: float | None = None
    source: str = ""


class Lineup(NamedTuple):
    """What a problem measures: the baseline's name, the variants (the baseline among
    them), and the rivals that could not be built here."""
    baseline: str
    variants: list[Variant]
    skipped: list[Skipped]


def reason(error: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"[:300]
