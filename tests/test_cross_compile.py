"""The CI gate of "profiled across GPU generations": the kernels compile for real GPUs,
without one. Every tile config the tuning table holds, of every kernel (the forward and
backward of attention and of token pooling), in each specialization the ops launch
(chunked with lengths; with a window and sinks, the block-causal family's; teacher
forcing's first-aligned piece with fp32 outputs; the split-KV forward; packed
cross-attention, packed causal; padded and packed pooling: kernels/aot/registry.py),
cross-compiles for each generation that selects it — sm_80 (A100), sm_86 (A10, RTX 30;
sm_89, L4 and RTX 40, compiles to the same code: kernels/aot/archs.GATE_ARCHS), sm_90
(H100), sm_100 (B200) — with

- no register spills (STACK == 0 and LOCAL == 0), except in the NaN repair passes (their
  fixed tiles spill a few bytes in fp32 at head dim 256 on some archs; they run only where a
  NaN already is, so their speed, all a spill costs, does not matter),
- shared memory within the arch's per-block maximum,
- tensor-core instructions in the SASS for 16-bit inputs in every kernel with a tl.dot
  (all but the attention backward's delta kernel). fp32 inputs use IEEE fp32 dots by
  contract (TF32 would lose 3 decimal digits), so they are not expected to use tensor
  cores.

The compiles are those of `mirasol profile` (mirasol/profile.py) at each table bucket
(head dims 64, 128, 256; 16, 32, 64 output tokens), for bfloat16 and float32. float16
shares bfloat16's entries and differs by a few registers at most (at 17 of 260 measured
compiles; the largest gap 8): `mirasol profile`, which exits 1 on any of these failures,
checks it too, with a non-power-of-two head dim (bench/results/profile.md), at the cost of
half again this test's time.
A compile whose compile key (kernels/aot/cubin.resources: triton's cache key of the
kernel source, specialization, options, target, triton and ptxas, and the reader's source)
is in the committed bench/results/profile.json takes its record from there: only what
changed since the profile was regenerated compiles. One answered compile per kernel and
arch, the one with the most registers, is recompiled every run and must equal its record
(profile.run_known).

They run in worker processes started without TRITON_INTERPRET (which conftest.py sets for
this process: kernels defined under the interpreter cannot be compiled). A kernel that
only works in the interpreter fails here. This runs under the newest triton pyproject.toml
admits; tests/test_oldest_triton.py runs the same checks under the oldest.
"""

from dataclasses import astuple
from pathlib import Path

import pytest

from mirasol import profile
from mirasol.kernels.aot.archs import GATE_ARCHS
from mirasol.kernels._configs import TABLE
from mirasol.kernels._launch import FIXED_CONFIGS, table_entry

COMMITTED = Path(__file__).resolve().parents[1] / "bench" / "results" / "profile.json"

pytestmark = pytest.mark.compile


@pytest.fixture(scope="module")
def gate():
    checked = profile.run_known(profile.gate_cases(), profile.known_resources(COMMITTED),
                                jobs=2)
    print(checked.summary(COMMITTED.name))
    return checked


@pytest.fixture(scope="module")
def records(gate):
    return gate.records


def test_the_committed_profile_answers_as_the_compiles_do(gate):
    known = profile.known_resources(COMMITTED)
    answered = {(r.kernel, r.arch) for r in gate.records if r.key in known}
    assert gate.rechecked == len(answered)
    assert not gate.mismatches, "\n".join(gate.mismatches)


def test_every_table_entry_is_compiled_for_every_arch(records):
    compiled = {(r.kernel, r.family, "fp32" if r.dtype == "float32" else "half", r.size,
                 r.config) for r in records}
    families = {r.family for r in records}
    expected = {(kernel, family, dclass, size, table_entry(kernel, family, dclass, size))
                for kernel, by_family in TABLE.items() for family in families
                for dclass, by_size in by_family[family].items() for size in by_size}
    # The fixed tiles of the NaN repair passes, at the largest head dim (registry.Op.fixed).
    expected |= {(kernel, family, dclass, 256, astuple(config))
                 for kernel, by_class in FIXED_CONFIGS.items() for family in families
                 for dclass, config in by_class.items()}
    assert compiled == expected
    assert {r.arch for r in records} == set(GATE_ARCHS)


def test_no_spills_within_shared_memory_tensor_cores_for_16_bit(records):
    failures = [f"{r.where()}: {'; '.join(r.problems())}" for r in records if r.problems()]
    assert not failures, f"{len(failures)} of {len(records)} compiles fail:\n" + "\n".join(
        failures)
