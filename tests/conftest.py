"""Test set-up: the triton backend runs through Triton's interpreter on CPU, so
TRITON_INTERPRET must be set before mirasol.kernels is first imported. Tests that compile
kernels for real GPUs run in a subprocess without it (see test_cross_compile.py)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The invariance tests hold the torch backend to bitwise equality across batch positions
# and strides. PyTorch's CPU BLAS (MKL) rounds alignment-dependently by default (measured
# on an AMD EPYC: a gradient that cancels to ~1e-8 flips sign with the input's 8-byte
# alignment); its reproducible mode makes the result depend on the values only, so what
# the tests see is the backend's own dependence (docs/known-problems.md).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import Phase, settings  # noqa: E402

from mirasol.testing.pytest_plugin import PROFILE as CI_PROFILE  # noqa: E402  (registers it)

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _memoize_interpreter_patching() -> None:
    """Triton's interpreter re-patches triton.language (an ``inspect.getmembers`` walk of
    four modules) at every call of a @triton.jit helper, although the modules stay patched
    until the launch ends: a third of the interpreter's time in the kernels here. Patching
    a module that is already patched changes nothing (its builtins are wrapped already), so
    the walk is skipped until the launch's scope is restored."""
    from triton.runtime import interpreter

    patched: set[int] = set()
    patch_builtin, restore = interpreter._patch_builtin, interpreter._LangPatchScope.restore

    def _patch_builtin(pkg, builder, scope):
        if id(pkg) not in patched:
            patched.add(id(pkg))
            patch_builtin(pkg, builder, scope)

    def _restore(self):
        patched.clear()
        restore(self)

    interpreter._patch_builtin = _patch_builtin
    interpreter._LangPatchScope.restore = _restore


_memoize_interpreter_patching()

# "ci" is deterministic (the same examples every run, so CI never flakes on a new draw);
# HYPOTHESIS_PROFILE=dev explores with fresh randomness and more examples; "pinned" runs only
# the @example cases (the edges), as tests/test_oldest_triton.py does under triton 3.6.
# "ci" is the profile the pytest plugin gives users (mirasol-ci), under the name CI knows.
_ci = settings.get_profile(CI_PROFILE)
settings.register_profile("ci", _ci)
settings.register_profile("dev", _ci, derandomize=False, max_examples=200)
settings.register_profile("pinned", _ci, derandomize=False, phases=[Phase.explicit])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
