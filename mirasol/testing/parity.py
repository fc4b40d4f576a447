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
                  is_grad: bool = False, magnitude: float | None = None,
                  terms: float | None = None) -> ParityReport:
    """Compare ``actual`` (fast path) and ``reference`` (same dtype) with ``oracle``.
    ``magnitude`` scales the floor (default: this oracle's) and ``terms`` its accumulator
    part (default: ``magnitude``; see ``tolerances``)."""
    if actual.shape != oracle.shape or reference.shape != oracle.shape:
        raise ValueError(f"{name}: shapes differ: actual {tuple(actual.shape)}, reference "
                         f"{tuple(reference.shape)}, oracle {tuple(oracle.shape)}")
    oracle = oracle.detach().double()
    err, where = _max_error(actual.detach(), oracle)
    ref_err, _ = _max_error(reference.detach(), oracle)
    if magnitude is None:
        magnitude = tolerances.magnitude(oracle)
    fl = tolerances.floor(actual.dtype, magnitude, terms)
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


# One run of a function under comparison: (inputs, output-gradient maker) -> (output,
# gradients), the gradients in the order the reports label them.
_Run = Callable[[Sequence, Callable[[Tensor], Tensor]], tuple[Tensor, list[Tensor]]]


def _runner(fn: Callable[..., Tensor], grad_idx: Sequence[int],
            params: Callable[[], Sequence[torch.nn.Parameter]] = tuple) -> _Run:
    """Runs ``fn`` on fresh leaves of the inputs ``grad_idx`` and backpropagates, returning
    the output and the gradients of those inputs, then of ``params()`` (zeros for a
    parameter the output does not depend on)."""
    def run(inputs: Sequence, grad_out: Callable[[Tensor], Tensor]):
        # detach() keeps each input's strides, so a non-contiguous input stays one.
        leaves = [x.detach().requires_grad_(True) if i in grad_idx else x
                  for i, x in enumerate(inputs)]
        out = fn(*leaves)
        weights = list(params())
        if grad_idx or weights:
            out.backward(grad_out(out))
        grads = [leaves[i].grad for i in grad_idx]
        grads += [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
        return out.detach(), grads
    return run


def _floating(inputs: Sequence) -> list[int]:
    return [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.is_floating_point()]


def _compare(fast: _Run, reference: _Run, oracle: _Run, inputs: Sequence,
             grad_labels: Sequence[str], seed: int) -> list[ParityReport]:
    """The §5 rule: ``oracle`` on float64 copies of the floating inputs, ``fast`` and
    ``reference`` on the inputs as given, one random float64 output gradient (cast to each
    run's dtype) backpropagated through all three; one report for the output and one per
    gradient (``grad_labels``)."""
    gen = torch.Generator().manual_seed(seed)
    cache: dict[str, Tensor] = {}

    def grad_out(out: Tensor) -> Tensor:
        if "g" not in cache:
            cache["g"] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        return cache["g"].to(out.device, out.dtype)

    floating = _floating(inputs)
    oracle_inputs = [x.detach().double() if i in floating else x for i, x in enumerate(inputs)]
    o_out, o_grads = oracle(oracle_inputs, grad_out)
    f_out, f_grads = fast(inputs, grad_out)
    r_out, r_grads = reference(inputs, grad_out)
    mag = tolerances.magnitude(o_out, *o_grads)
    terms = tolerances.gradient_terms(o_out, cache["g"]) if "g" in cache else None
    reports = [parity_report("out", f_out, r_out, o_out, magnitude=mag)]
    for label, fg, rg, og in zip(grad_labels, f_grads, r_grads, o_grads):
        reports.append(parity_report(label, fg, rg, og, is_grad=True, magnitude=mag,
                                     terms=terms))
    return reports


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
    grad_idx = _floating(inputs) if grads else []
    return _compare(_runner(fast, grad_idx), _runner(reference, grad_idx),
                    _runner(reference if oracle is None else oracle, grad_idx), inputs,
                    [f"d{names[i]}" for i in grad_idx], seed)


def assert_identical(actual: Tensor, expected: Tensor) -> None:
    """Bitwise equality, for invariants that must hold exactly rather than to a tolerance:
    a sample's position in the batch, its padding, the strides of an input."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def compare_modules(fast: torch.nn.Module, reference: torch.nn.Module, inputs: Sequence, *,
                    names: Sequence[str] | None = None, seed: int = 0,
                    oracle: torch.nn.Module | None = None) -> list[ParityReport]:
    """The §5 rule between two modules with the same parameters (names and values), each
    in its own dtype: ``fast`` against ``reference``, and ``oracle`` (default: a float64
    copy of ``reference``) as the truth. Reports the output, the gradient of each floating
    input (``names``) and of every parameter, by ``reference``'s parameter names. The
    modules' gradients are reset first; they hold this run's afterwards."""
    oracle = copy.deepcopy(reference).double() if oracle is None else oracle
    names = list(names) if names is not None else [f"x{i}" for i in range(len(inputs))]
    grad_idx = _floating(inputs)
    params = [n for n, _ in reference.named_parameters()]
    for model in (fast, reference, oracle):
        if [n for n, _ in model.named_parameters()] != params:
            raise ValueError("compare_modules: the modules must have the same parameters, "
                             "named alike and in one order")

    def runner(model: torch.nn.Module) -> _Run:
        model.zero_grad(set_to_none=True)
        return _runner(model, grad_idx, model.parameters)

    labels = [f"d{names[i]}" for i in grad_idx] + [f"grad {n}" for n in params]
    return _compare(runner(fast), runner(reference), runner(oracle), inputs, labels, seed)


def compare_module_with_oracle(module: torch.nn.Module, inputs: Sequence, *, backend: str,
                               reference_backend: str = "reference",
                               names: Sequence[str] | None = None,
                               seed: int = 0) -> list[ParityReport]:
    """The §5 rule at module level: ``module`` with its fast layers on ``backend`` against
    the same weights on ``reference_backend``, both in the module's dtype, and a float64
    copy on ``reference_backend`` as the oracle (:func:`compare_modules`)."""
    from mirasol.layers import set_backend

    return compare_modules(set_backend(copy.deepcopy(module), backend),
                           set_backend(copy.deepcopy(module), reference_backend), inputs,
                           names=names, seed=seed)
