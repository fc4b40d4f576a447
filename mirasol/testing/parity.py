"""The parity check of DESIGN.md §5, usable from any CI.

``compare_with_oracle(fast, reference, inputs)`` runs ``fast`` and ``reference`` on the
inputs in their dtype and ``reference`` on float64 copies (the oracle), backpropagates the
same random output gradient through all three, and returns one :class:`ParityReport`
per compared tensor (the output and each input's gradient). ``assert_parity`` raises with
a report that says how far off, where, and against what allowance.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from mirasol.testing import tolerances


@dataclass(frozen=True)
class ParityReport:
    name: str
    dtype: torch.dtype
    err: float           # max |fast - oracle|
    ref_err: float       # max |reference in dtype - oracle|
    allowed: float       # factor * ref_err + floor
    factor: float
    floor: float
    where: tuple[int, ...]  # index of the largest error
    value: float         # fast at that index
    expected: float      # oracle at that index

    @property
    def ratio(self) -> float:
        """err / allowed: passes when <= 1."""
        return self.err / self.allowed if self.allowed > 0 else math.inf

    @property
    def ok(self) -> bool:
        return self.err <= self.allowed

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (f"{self.name} [{str(self.dtype).removeprefix('torch.')}] {verdict}: "
                f"max err {self.err:.3e} at {list(self.where)} (got {self.value:.6g}, "
                f"oracle {self.expected:.6g}); allowed {self.allowed:.3e} = "
                f"{self.factor:g} x reference err {self.ref_err:.3e} + floor "
                f"{self.floor:.3e}; ratio {self.ratio:.3f}")


def _max_error(actual: Tensor, oracle: Tensor) -> tuple[float, tuple[int, ...]]:
    diff = (actual.double() - oracle).abs()
    # A NaN or inf where the oracle is finite is an infinite error, never a pass.
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, math.inf))
    if diff.numel() == 0:
        return 0.0, ()
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return diff.max().item(), where


def parity_report(name: str, actual: Tensor, reference: Tensor, oracle: Tensor, *,
                  is_grad: bool = False, magnitude: float | None = None) -> ParityReport:
    """Compare ``actual`` (fast path) and ``reference`` (same dtype) with ``oracle``.
    ``magnitude`` scales the floor (default: this oracle's, see ``tolerances``)."""
    if actual.shape != oracle.shape or reference.shape != oracle.shape:
        raise ValueError(f"{name}: shapes differ: actual {tuple(actual.shape)}, reference "
                         f"{tuple(reference.shape)}, oracle {tuple(oracle.shape)}")
    oracle = oracle.detach().double()
    err, where = _max_error(actual.detach(), oracle)
    ref_err, _ = _max_error(reference.detach(), oracle)
    if magnitude is None:
        magnitude = tolerances.magnitude(oracle)
    fl = tolerances.floor(actual.dtype, magnitude)
    fa = tolerances.factor(is_grad)
    value = actual.detach()[where].item() if where else 0.0
    expected = oracle[where].item() if where else 0.0
    return ParityReport(name, actual.dtype, err, ref_err, fa * ref_err + fl, fa, fl, where,
                        value, expected)


def assert_parity(reports: ParityReport | Sequence[ParityReport]) -> None:
    """Raise AssertionError listing every report if any fails."""
    reports = [reports] if isinstance(reports, ParityReport) else list(reports)
    if not all(r.ok for r in reports):
        raise AssertionError("parity check failed:\n" + "\n".join(f"  {r}" for r in reports))


def _run(fn: Callable[..., Tensor], inputs: Sequence, grad_idx: Sequence[int],
         grad_out: Callable[[Tensor], Tensor]) -> tuple[Tensor, list[Tensor]]:
    # detach() keeps each input's strides, so a non-contiguous input stays one.
    leaves = [x.detach().requires_grad_(True) if i in grad_idx else x
              for i, x in enumerate(inputs)]
    out = fn(*leaves)
    if grad_idx:
        out.backward(grad_out(out))
    return out.detach(), [leaves[i].grad for i in grad_idx]


def compare_with_oracle(fast: Callable[..., Tensor], reference: Callable[..., Tensor],
                        inputs: Sequence, *, names: Sequence[str] | None = None,
                        grads: bool = True, seed: int = 0,
                        oracle: Callable[..., Tensor] | None = None) -> list[ParityReport]:
    """Parity of ``fast`` against ``reference`` (DESIGN.md §5) on ``inputs``.

    inputs: positional args; floating tensors get gradients when ``grads``. ``names`` name
    the inputs in the reports. ``oracle`` (default: ``reference``) is run on float64
    copies of the floating inputs — pass an outside definition to test semantics too.
    Returns reports for "out" and "d<name>" of each floating input.
    """
    names = list(names) if names is not None else [f"x{i}" for i in range(len(inputs))]
    floating = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.is_floating_point()]
    grad_idx = floating if grads else []
    oracle_fn = reference if oracle is None else oracle
    oracle_inputs = [x.detach().double() if i in floating else x for i, x in enumerate(inputs)]

    gen = torch.Generator().manual_seed(seed)
    cache: dict[str, Tensor] = {}

    def grad_out(out: Tensor) -> Tensor:
        # One float64 output gradient, cast to each run's dtype.
        if "g" not in cache:
            cache["g"] = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
        return cache["g"].to(out.dtype)

    o_out, o_grads = _run(oracle_fn, oracle_inputs, grad_idx, grad_out)
    f_out, f_grads = _run(fast, inputs, grad_idx, grad_out)
    r_out, r_grads = _run(reference, inputs, grad_idx, grad_out)
    mag = tolerances.magnitude(o_out, *o_grads)
    reports = [parity_report("out", f_out, r_out, o_out, magnitude=mag)]
    for i, fg, rg, og in zip(grad_idx, f_grads, r_grads, o_grads):
        reports.append(parity_report(f"d{names[i]}", fg, rg, og, is_grad=True, magnitude=mag))
    return reports


def assert_identical(actual: Tensor, expected: Tensor) -> None:
    """Bitwise equality, for invariants that must hold exactly rather than to a tolerance:
    a sample's position in the batch, its padding, the strides of an input."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def compare_module_with_oracle(module: torch.nn.Module, inputs: Sequence, *, backend: str,
                               reference_backend: str = "reference",
                               names: Sequence[str] | None = None,
                               seed: int = 0) -> list[ParityReport]:
    """The §5 rule at module level: ``module`` with its fast layers on ``backend`` against
    the same weights on ``reference_backend``, both in the module's dtype, and a float64
    copy on ``reference_backend`` as the oracle. Reports the output, the gradient of each
    floating input (``names``) and of every parameter."""
    from mirasol.layers import set_backend

    names = list(names) if names is not None else [f"x{i}" for i in range(len(inputs))]
    floating = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.is_floating_point()]
    gen = torch.Generator().manual_seed(seed)
    cache: dict[str, Tensor] = {}

    def run(model: torch.nn.Module, args: Sequence):
        leaves = [x.detach().requires_grad_(True) if i in floating else x
                  for i, x in enumerate(args)]
        model.zero_grad(set_to_none=True)
        out = model(*leaves)
        if "g" not in cache:
            cache["g"] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        out.backward(cache["g"].to(out.device, out.dtype))
        grads = [leaves[i].grad for i in floating]
        grads += [p.grad if p.grad is not None else torch.zeros_like(p)
                  for p in model.parameters()]
        return out.detach(), grads

    oracle_args = [x.detach().double() if i in floating else x for i, x in enumerate(inputs)]
    o_out, o_grads = run(set_backend(copy.deepcopy(module), reference_backend).double(),
                         oracle_args)
    f_out, f_grads = run(set_backend(copy.deepcopy(module), backend), inputs)
    r_out, r_grads = run(set_backend(copy.deepcopy(module), reference_backend), inputs)
    mag = tolerances.magnitude(o_out, *o_grads)
    labels = [f"d{names[i]}" for i in floating] + [f"grad {n}" for n, _ in
                                                   module.named_parameters()]
    reports = [parity_report("out", f_out, r_out, o_out, magnitude=mag)]
    for label, fg, rg, og in zip(labels, f_grads, r_grads, o_grads):
        reports.append(parity_report(label, fg, rg, og, is_grad=True, magnitude=mag))
    return reports
