"""The kernels under the oldest Triton that pyproject.toml admits, beside the newest.

pyproject.toml declares the triton range CI tests: its lower bound (3.6, the triton of
torch 2.11 and of the GPU image) runs here in a second environment, `.venv-triton36`
(`make test` builds it: torch 2.13.0 CPU, triton 3.6.0, numpy < 2.4, the project editable;
``MIRASOL_OLDEST_TRITON_PYTHON`` names its python), and everything else in this suite runs
under the newest (3.9, torch 2.13's). In that environment:

- the cross-compile gate (tests/test_cross_compile.py's checks, by `mirasol profile
  --gate`; `make gate-oldest-triton` alone), answered by compile key from
  bench/results/profile-oldest-triton.json where nothing changed, and
- the interpreter parity tests' pinned cases (their ``@example`` edges, forward and
  gradients, of each op's triton backend): Triton's interpreter is part of triton, and
  3.6's differs from 3.9's (it converts 1-element arrays with ``int()``, hence numpy < 2.4).

Each runs in a subprocess of that environment's python: the gate's compile workers start
there (without TRITON_INTERPRET), the parity tests under pytest there (with it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mirasol import profile

ROOT = Path(__file__).resolve().parents[1]
OLDEST_PYTHON = ROOT / os.environ.get("MIRASOL_OLDEST_TRITON_PYTHON",
                                      ".venv-triton36/bin/python")
# The gate's compiles under the oldest triton, committed (`make profiles` rewrites it): a
# compile whose key it holds is answered from it, one per kernel and arch recompiled to
# check it (mirasol.profile.run_known), as tests/test_cross_compile.py does with
# bench/results/profile.json.
OLDEST_PROFILE = ROOT / "bench" / "results" / "profile-oldest-triton.json"
# The parity tests whose pinned edges run under the oldest triton (the triton backend of
# each op, each layout, the block-causal family's forms).
PARITY_TESTS = ("tests/test_chunked_attention_parity.py::test_parity_forward_and_gradients",
                "tests/test_chunked_attention_parity.py::test_family_parity",
                "tests/test_chunked_attention_parity.py::test_packed_family_parity",
                "tests/test_cross_attention.py::test_packed_parity",
                "tests/test_cross_attention.py::test_padded_parity",
                "tests/test_token_pool.py::test_parity")
# Bounds on a hang, well past the measured cold times (docs/profiling.md).
GATE_TIMEOUT_S = 1800
PARITY_TIMEOUT_S = 900


def _declared(name: str) -> Requirement:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        requirements = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    return next(r for r in requirements if r.name == name)


def _oldest_python() -> str:
    if not OLDEST_PYTHON.exists():
        pytest.fail(f"no oldest-triton environment at {OLDEST_PYTHON}: `make test` builds it "
                    "(`make venv-oldest-triton` alone)")
    return str(OLDEST_PYTHON)


def _oldest(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([_oldest_python(), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _versions(python: str) -> dict[str, str]:
    out = subprocess.run(
        [python, "-c", "import json, importlib.metadata as m; print(json.dumps("
                       "{p: m.version(p) for p in ('torch', 'triton', 'numpy')}))"],
        capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_ci_tests_both_ends_of_the_declared_triton_range():
    """The oldest environment holds the lower bound pyproject.toml declares for triton, this
    one the newest release below its upper bound; both hold a torch it admits."""
    triton, torch = _declared("triton"), _declared("torch")
    oldest = _versions(_oldest_python())
    newest = _versions(sys.executable)
    lower = next(s.version for s in triton.specifier if s.operator == ">=")
    upper = next(s.version for s in triton.specifier if s.operator == "<")
    assert oldest["triton"] in (lower, f"{lower}.0"), (oldest, str(triton))
    major, minor = (int(p) for p in upper.split(".")[:2])
    assert newest["triton"].startswith(f"{major}.{minor - 1}."), (newest, str(triton))
    for versions in (oldest, newest):
        assert triton.specifier.contains(versions["triton"]), (versions, str(triton))
        assert torch.specifier.contains(versions["torch"].split("+")[0]), (versions, str(torch))


@pytest.mark.oldest_triton_gate
def test_cross_compile_gate_under_the_oldest_triton(tmp_path):
    """tests/test_cross_compile.py's gate, compiled by the oldest triton: every table entry
    of every kernel in every specialization the ops launch, bf16 and fp32, at each table
    bucket, with no spills, within shared memory, with tensor cores for 16-bit inputs, on
    sm_80, sm_86, sm_90 and sm_100 (sm_89: kernels/aot/archs.GATE_ARCHS): the 632 compiles
    of `mirasol profile --gate`. All of them, because the registers ptxas gives a
    specialization under 3.6 are predicted neither by its siblings' nor by 3.9's (a forward
    that takes 94 registers under 3.9 spills at 80 under 3.6 while its sibling takes 96
    without), and a spill of 8-16 bytes in one specialization is the margin a retuned table
    sits at. Measured on a table that failed 49 of 336 such compiles (26 of the 144 entries
    x archs): one specialization per entry, the one with the most registers under 3.9,
    flagged 21 of the 26; the two with the most, 25; every specialization at the largest
    size only, 9. A compile whose key OLDEST_PROFILE holds is answered from it, and one per
    kernel and arch recompiled to check it: only what changed since `make profiles`
    compiles."""
    out = tmp_path / "profile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = _oldest("-m", "mirasol", "profile", "--gate", "--jobs", "2", "--out", str(out),
                  "--known", str(OLDEST_PROFILE), env=env, timeout=GATE_TIMEOUT_S)
    print(next((line for line in run.stdout.splitlines() if "answered by" in line), ""))
    assert run.returncode in (0, 1) and out.exists(), run.stderr[-4000:]
    meta, records = profile.load(out)
    assert meta["triton"] == _versions(_oldest_python())["triton"]
    assert [r.case() for r in records] == profile.gate_cases()
    failures = [f"{r.where()}: {'; '.join(r.problems())}" for r in records if r.problems()]
    assert not failures, (f"triton {meta['triton']}: {len(failures)} of {len(records)} "
                          "compiles fail:\n" + "\n".join(failures))
    assert run.returncode == 0, run.stdout[-4000:]


def test_parity_edges_under_the_oldest_triton():
    env = {**os.environ, "HYPOTHESIS_PROFILE": "pinned", "OMP_NUM_THREADS": "1"}
    run = _oldest("-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--disable-warnings",
                  "-k", "triton", *PARITY_TESTS, env=env, timeout=PARITY_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    passed = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("PASSED")]
    for test in PARITY_TESTS:
        assert any(p.startswith(f"{test}[") for p in passed), (test, run.stdout[-2000:])
