"""pytest plugin: mirasol's parity rule for *your* kernels, in your CI.

Loaded wherever mirasol is installed (the ``pytest11`` entry point ``mirasol``; disable it
with ``-p no:mirasol``). It gives

- the ``parity`` fixture: ``parity(fast, reference, inputs, names=..., seed=...)`` checks
  ``fast`` against ``reference`` by the rule of DESIGN.md §5 — output and the gradient of
  every floating input, each within 2x (3x for gradients) of ``reference``'s own error in
  the inputs' dtype, against ``reference`` run on float64 copies — and fails the test with
  every report (max error, where, the oracle's value, the allowance) when one fails. It
  returns the reports, and records each as a ``parity`` user property (in junit XML);
- the ``parity_module`` fixture: the same for an ``nn.Module`` (output, input gradients
  and every parameter gradient; :func:`~mirasol.testing.compare_module_with_oracle`);
- the hypothesis profile ``mirasol-ci`` (``--hypothesis-profile=mirasol-ci``): the same
  examples every run (CI never flakes on a new draw), 25 of them, no deadline (a first call
  compiles kernels);
- a report header line: mirasol, torch and triton versions and whether Triton's
  interpreter is on.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Sequence

import pytest

from mirasol.testing.parity import (ParityReport, assert_parity, compare_module_with_oracle,
                                    compare_with_oracle)

PROFILE = "mirasol-ci"


def _register_profile() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is optional for the fixtures
        return
    settings.register_profile(PROFILE, derandomize=True, max_examples=25, deadline=None,
                              print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])


_register_profile()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def pytest_report_header(config) -> str:
    interpreter = "on" if os.environ.get("TRITON_INTERPRET") == "1" else "off"
    return (f"mirasol {_version('mirasol-kernels')}: torch {_version('torch')}, triton "
            f"{_version('triton')}, TRITON_INTERPRET {interpreter}")


# The test running now. The fixtures are session-scoped (stateless, so hypothesis may reuse
# them across the examples of a @given test) and record their reports on this item.
_running: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _checked(reports: list[ParityReport]) -> list[ParityReport]:
    if _running:
        _running[-1].user_properties.extend(("parity", str(r)) for r in reports)
    assert_parity(reports)
    return reports


@pytest.fixture(scope="session")
def parity() -> Callable[..., list[ParityReport]]:
    """``parity(fast, reference, inputs, *, names=None, grads=True, seed=0, oracle=None)``:
    :func:`~mirasol.testing.compare_with_oracle`, asserted."""
    def check(fast: Callable, reference: Callable, inputs: Sequence, **kwargs):
        return _checked(compare_with_oracle(fast, reference, inputs, **kwargs))
    return check


@pytest.fixture(scope="session")
def parity_module() -> Callable[..., list[ParityReport]]:
    """``parity_module(module, inputs, *, backend, reference_backend="reference",
    names=None, seed=0)``: :func:`~mirasol.testing.compare_module_with_oracle`, asserted."""
    def check(module, inputs: Sequence, **kwargs):
        return _checked(compare_module_with_oracle(module, inputs, **kwargs))
    return check
