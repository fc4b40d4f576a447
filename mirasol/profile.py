"""``mirasol profile``: every kernel at every tuning configuration, cross-compiled for each
GPU generation without a GPU, with its resources and theoretical occupancy.

For each kernel of each op (forward and backward), specialization ("variant"), dtype and
size, the launch the op makes on ``sm_<arch>`` (with the tile config that arch's family
selects from kernels/_configs.py) is compiled and its cubin read (kernels/aot/):
registers per thread, shared memory per block, spills, occupancy and its limiter, and the
tensor-core instructions in the SASS. The CI gate (tests/test_cross_compile.py) checks the
same records with :meth:`Record.problems`.

Compiles are CPU-bound and independent (about 1 s each): they run in a pool of worker
processes, started fresh ("spawn") with TRITON_INTERPRET removed, because kernels defined
under the interpreter cannot be compiled. A compile any process has already done (the
same kernel, specialization, arch and options; e.g. head dim 80, which compiles to the
code of 128: its loads are masked at run time) is read back from the store beside triton's
cache, not repeated (kernels/aot/cache.py). Importing this module does not import triton.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable

from mirasol._format import format_markdown, format_rows

DTYPES = ("float16", "bfloat16", "float32")
# Sizes profiled beside each op's table buckets: a head dim that is not a power of two
# (padded to the 128 bucket, its loads masked).
EXTRA_SIZES = {"attention": (80,)}
# The variant of a kernel whose code is the same in every variant (compiled once).
ALL_VARIANTS = "all"


@dataclass(frozen=True)
class Case:
    """One compile: ``kernel`` of ``op``, specialized as in ``variant``, for ``dtype`` and
    ``size`` (attention: head dim; token pooling: output tokens) on ``sm_<arch>``."""

    arch: int
    op: str
    kernel: str
    variant: str
    dtype: str
    size: int


@dataclass(frozen=True)
class Record(Case):
    """A compiled case. Bytes for memory; registers per thread; ``config`` is the table
    entry used: (block_m, block_n, num_warps, num_stages)."""

    family: str
    size_name: str
    config: tuple[int, int, int, int]
    registers: int
    shared_bytes: int
    shared_limit: int  # the arch's per-block opt-in maximum
    stack_bytes: int
    local_bytes: int
    blocks: int  # resident blocks per SM
    warps: int  # resident warps per SM
    max_warps: int
    limiters: tuple[str, ...]
    tensor_core_ops: dict[str, int]  # SASS mnemonic -> count
    expects_tensor_cores: bool
    # A NaN repair pass (registry.Op.fixed): it runs only where a NaN already is, so its
    # speed, all a spill costs, does not matter; the rest of the gate holds for it.
    may_spill: bool = False
    key: str = ""  # kernels/aot/cubin.resources: equal keys compile to equal resources

    def problems(self) -> list[str]:
        """Why this compile fails the gate (empty if it passes): register spills (a stack
        frame or local memory; allowed in a NaN repair pass), more shared memory than a
        block may have, or no tensor-core instruction where one is due. 16-bit inputs are
        due them in every kernel with a tl.dot; fp32 inputs are not: they use IEEE fp32 dots
        by contract (TF32 would lose 3 decimal digits), which run on the FMA units."""
        found = []
        if (self.stack_bytes or self.local_bytes) and not self.may_spill:
            found.append(f"spills: {self.stack_bytes} B stack, {self.local_bytes} B local "
                         "per thread")
        if self.shared_bytes > self.shared_limit:
            found.append(f"{self.shared_bytes} B of shared memory > the {self.shared_limit} "
                         "B a block may use")
        if self.expects_tensor_cores and not self.tensor_core_ops:
            found.append("no tensor-core instructions")
        return found

    def case(self) -> Case:
        """The compile this records."""
        return Case(**{f.name: getattr(self, f.name) for f in fields(Case)})

    def where(self) -> str:
        """The case and its config, for messages."""
        m, n, warps, stages = self.config
        return (f"sm_{self.arch} {self.kernel} ({self.variant}) {self.dtype} "
                f"{self.size_name}={self.size} config block_m={m} block_n={n} "
                f"num_warps={warps} num_stages={stages} ({self.family} table)")


def cases(archs: Iterable[int] | None = None, ops: Iterable[str] | None = None,
          kernels: Iterable[str] | None = None, dtypes: Iterable[str] = DTYPES,
          sizes: Iterable[int] | None = None, buckets_only: bool = False) -> list[Case]:
    """Every compile to profile, ordered by kernel, variant, dtype, size, arch (the archs of
    one configuration side by side). Each filter left None keeps everything; ``sizes``
    defaults to each op's table buckets plus :data:`EXTRA_SIZES` (only the buckets with
    ``buckets_only``). Raises ValueError naming the filter that matches nothing known."""
    from mirasol.kernels.aot.archs import ARCHS
    from mirasol.kernels.aot.registry import KERNELS, OPS

    def pick(name, given, known):
        if given is None:
            return list(known)
        given = list(given)
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(f"{name}: unknown {unknown}; expected some of {list(known)}")
        return given

    archs = pick("arch", archs, ARCHS)
    ops = pick("op", ops, OPS)
    kernels = pick("kernel", kernels, KERNELS)
    dtypes = pick("dtype", dtypes, DTYPES)
    sizes = None if sizes is None else set(sizes)
    selected = []
    for kernel in kernels:
        name = KERNELS[kernel]
        if name not in ops:
            continue
        op = OPS[name]
        variants = (ALL_VARIANTS,) if kernel in op.variant_free else op.variants_of(kernel)
        op_sizes = sorted({*op.buckets, *(() if buckets_only else EXTRA_SIZES.get(name, ()))})
        if kernel in op.fixed:
            op_sizes = [max(op.buckets)]
        if sizes is not None:
            op_sizes = [s for s in op_sizes if s in sizes]
        selected += [Case(arch, name, kernel, variant, dtype, size) for variant, dtype, size, arch
                     in itertools.product(variants, dtypes, op_sizes, archs)]
    if not selected:
        raise ValueError(f"no kernel matches op={ops}, kernel={kernels}, size={sizes}")
    return selected


# fp16 shares bfloat16's table entries and differs by a few registers at most
# (tests/test_cross_compile.py): the gates leave it to the full profile.
GATE_DTYPES = ("bfloat16", "float32")


def gate_cases() -> list[Case]:
    """The CI gates' compiles (tests/test_cross_compile.py under the newest triton,
    tests/test_oldest_triton.py under the oldest): every table entry of every kernel in
    every specialization, bf16 and fp32, at each table bucket, on
    kernels/aot/archs.GATE_ARCHS."""
    from mirasol.kernels.aot.archs import GATE_ARCHS

    return cases(archs=GATE_ARCHS, dtypes=GATE_DTYPES, buckets_only=True)


def _clean_worker() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    # Triton 3.9 warns when this is unset and means 1 (FMA contraction, as at run time).
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


# The fields of a record read off the cubin (kernels/aot/cubin.Resources): what a known
# compile key answers.
RESOURCE_FIELDS = ("registers", "shared_bytes", "stack_bytes", "local_bytes", "tensor_core_ops")


def _compile(case: Case, known: dict[str, dict] | None = None) -> Record:
    import torch

    from mirasol.kernels import arch_family
    from mirasol.kernels.aot.archs import ARCHS
    from mirasol.kernels.aot.cubin import resources
    from mirasol.kernels.aot.registry import OPS

    op = OPS[case.op]
    variant = op.variants[0] if case.variant == ALL_VARIANTS else case.variant
    capability = divmod(case.arch, 10)
    launch = op.launches(capability, getattr(torch, case.dtype), case.size,
                         variant)[case.kernel]
    res = resources(launch, case.arch, known)
    occ = res.occupancy
    c = launch.config
    return Record(**asdict(case), family=arch_family(capability), size_name=op.size_name,
                  config=(c.block_m, c.block_n, c.num_warps, c.num_stages),
                  registers=res.registers, shared_bytes=res.shared_bytes,
                  shared_limit=ARCHS[case.arch].shared_per_block,
                  stack_bytes=res.stack_bytes, local_bytes=res.local_bytes,
                  blocks=occ.blocks, warps=occ.warps, max_warps=occ.max_warps,
                  limiters=occ.limiters, tensor_core_ops=res.tensor_core_ops,
                  expects_tensor_cores=(case.kernel not in op.dot_free
                                        and case.dtype != "float32"),
                  may_spill=case.kernel in op.fixed, key=res.key)


def run(selected: list[Case], jobs: int | None = None,
        progress: Callable[[str], None] | None = None,
        known: dict[str, dict] | None = None) -> list[Record]:
    """Compile every case in ``jobs`` worker processes (default: one per core); the
    records come back in the order of ``selected``. A case whose compile key is in
    ``known`` (:func:`known_resources`) takes its resources from there, uncompiled."""
    jobs = os.cpu_count() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    records: list[Record | None] = [None] * len(selected)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_clean_worker) as pool:
        futures = {pool.submit(_compile, case, known): i for i, case in enumerate(selected)}
        for done, future in enumerate(as_completed(futures), 1):
            records[futures[future]] = future.result()
            if progress and (done % 50 == 0 or done == len(selected)):
                progress(f"{done}/{len(selected)} compiled")
    return records


def _cells(records: list[Record]) -> list[tuple[str, ...]]:
    rows = [("kernel", "variant", "dtype", "size", "arch", "family", "config", "regs",
             "shared", "spills", "occupancy", "limiter", "tensor cores", "check")]
    for r in records:
        m, n, warps, stages = r.config
        tile = f"{m}x{n}" if n else f"{m}"
        tensor_cores = " ".join(f"{count} {op}" for op, count in r.tensor_core_ops.items())
        spills = f"{r.stack_bytes}/{r.local_bytes}" if r.stack_bytes or r.local_bytes else "-"
        rows.append((r.kernel, r.variant, r.dtype, f"{r.size_name}={r.size}", f"sm_{r.arch}",
                     r.family, f"{tile} w{warps} s{stages}", str(r.registers),
                     f"{r.shared_bytes / 1024:.1f} KiB", spills,
                     f"{r.warps}/{r.max_warps} {r.warps / r.max_warps:.0%}",
                     "+".join(r.limiters), tensor_cores or "-",
                     "; ".join(r.problems()) or "ok"))
    return rows


LEGEND = ("config: block_m x block_n, warps, pipeline stages (the table entry the arch's "
          "family selects). regs: registers per thread. shared: per block, static + "
          "dynamic. spills: stack/local bytes per thread (a failure, except in the NaN repair "
          "passes, *_nan, which run only where a NaN is present). occupancy: resident warps per SM "
          "/ the SM's maximum, limited by registers, shared memory, threads or blocks per "
          "SM. tensor cores: count of tensor-core instructions in the SASS (HMMA on "
          "sm_80/86/89, HGMMA on sm_90, UTC*MMA on sm_100); fp32 inputs use IEEE fp32 dots "
          "by contract, without tensor cores.")


def format_table(records: list[Record]) -> str:
    """The records as a plain-text table, one row per compile."""
    return format_rows(_cells(records))


def _archs_cells(records: list[Record]) -> list[tuple[str, ...]]:
    from mirasol.kernels.aot.archs import ARCHS

    rows = [("arch", "GPUs", "table family", "shared/block", "max warps", "compiles",
             "failing")]
    for arch in sorted({r.arch for r in records}):
        mine = [r for r in records if r.arch == arch]
        spec = ARCHS[arch]
        rows.append((f"sm_{arch}", spec.gpus, mine[0].family,
                     f"{spec.shared_per_block // 1024} KiB", str(spec.max_warps),
                     str(len(mine)), str(sum(bool(r.problems()) for r in mine))))
    return rows


def format_summary(records: list[Record]) -> str:
    """Per arch: its GPUs, the tuning-table family it uses, its limits, how many compiles
    failed the gate."""
    return format_rows(_archs_cells(records))


def write(records: list[Record], path: str, *, jobs: int, wall_s: float) -> list[str]:
    """Write the records as JSON to ``path`` and as Markdown beside it (``.md``); returns
    the paths written."""
    import json
    from importlib.metadata import version
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"triton": version("triton"), "compiles": len(records), "jobs": jobs,
            "cpu_count": os.cpu_count(), "wall_s": round(wall_s, 1)}
    # One record a line, so that reruns diff line by line.
    header = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()]
    records_json = ",\n".join(f"  {json.dumps(asdict(r))}" for r in records)
    out.write_text("{\n" + ",\n".join(header) + f',\n "records": [\n{records_json}\n ]\n}}\n')
    md = out.with_suffix(".md")
    md.write_text(
        "# Kernel resources per GPU generation\n\n"
        "Cross-compiled without a GPU by `mirasol profile` (triton "
        f"{meta['triton']}): {len(records)} compiles in {wall_s:.0f} s with {jobs} worker "
        f"processes on {os.cpu_count()} CPU cores.\n\n"
        f"{format_markdown(_archs_cells(records))}\n\n{LEGEND}\n\n"
        f"{format_markdown(_cells(records))}\n")
    return [str(out), str(md)]


def load(path: str) -> tuple[dict, list[Record]]:
    """A profile :func:`write` wrote: (its metadata, e.g. ``"triton"``, and its records)."""
    import json
    from pathlib import Path

    written = json.loads(Path(path).read_text())
    names = {f.name for f in fields(Record)}
    records = [Record(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in r.items() if k in names}) for r in written.pop("records")]
    return written, records


def known_resources(path) -> dict[str, dict]:
    """A written profile's resources by compile key, for :func:`run`'s ``known``. Raises
    ValueError if there is no such file."""
    if not os.path.exists(path):
        raise ValueError(f"known: no profile at {path} (mirasol profile --out writes one)")
    return {r.key: {f: getattr(r, f) for f in RESOURCE_FIELDS} for r in load(path)[1] if r.key}


@dataclass(frozen=True)
class KnownRun:
    """:func:`run_known`'s outcome: the records, how many came from the known keys, how
    many of those were recompiled, and where a recompile disagreed."""
    records: list[Record]
    answered: int
    rechecked: int
    mismatches: list[str]

    def summary(self, source: str) -> str:
        verdict = ("each equal to its record" if not self.mismatches
                   else f"{len(self.mismatches)} DIFFERENT")
        return (f"{self.answered} of {len(self.records)} compiles answered by their compile "
                f"key from {source}, {len(self.records) - self.answered} compiled; "
                f"{self.rechecked} answered ones recompiled: {verdict}")


def run_known(selected: list[Case], known: dict[str, dict], jobs: int | None = None,
              progress: Callable[[str], None] | None = None) -> KnownRun:
    """:func:`run` with ``known``, then a check of ``known`` itself: per kernel and arch, the
    answered case with the most registers (the nearest to spilling) is compiled and must
    give the recorded resources. A compile key covers everything that decides the result,
    so a stale or altered record shows up as a key that no case asks for, or as a
    mismatch here."""
    records = run(selected, jobs, progress, known)
    answered = [(case, r) for case, r in zip(selected, records) if r.key in known]
    sample: dict[tuple[str, int], tuple[Case, Record]] = {}
    for case, r in answered:
        best = sample.get((r.kernel, r.arch))
        if best is None or r.registers > best[1].registers:
            sample[(r.kernel, r.arch)] = (case, r)
    fresh = run([case for case, _ in sample.values()], jobs)
    mismatches = [
        f"{r.where()}: recorded {[getattr(r, f) for f in RESOURCE_FIELDS]}, compiles to "
        f"{[getattr(f_, f) for f in RESOURCE_FIELDS]}"
        for (_, r), f_ in zip(sample.values(), fresh)
        if any(getattr(r, f) != getattr(f_, f) for f in RESOURCE_FIELDS)]
    return KnownRun(records, len(answered), len(sample), mismatches)


def main(archs=None, ops=None, kernels=None, dtypes=None, sizes=None, jobs=None, out=None,
         progress: Callable[[str], None] | None = None, known: str | None = None,
         gate: bool = False) -> int:
    """Profile, print the table and the per-arch summary, write ``out`` if given. Returns
    the exit status: 1 if any compile fails the gate (see :meth:`Record.problems`), or if
    a recompile disagrees with ``known`` (a written profile whose compile keys answer the
    compiles they name: :func:`run_known`). ``gate``: the gates' compiles
    (:func:`gate_cases`), with no other filter."""
    if gate:
        filters = {"arch": archs, "op": ops, "kernel": kernels, "dtype": dtypes, "size": sizes}
        given = [name for name, value in filters.items() if value]
        if given:
            raise ValueError(f"--gate selects the gates' compiles itself; drop {given}")
    selected = gate_cases() if gate else cases(archs, ops, kernels, dtypes or DTYPES, sizes)
    jobs = os.cpu_count() if jobs is None else jobs
    start = time.perf_counter()
    checked = run_known(selected, known_resources(known), jobs, progress) if known else None
    records = checked.records if checked else run(selected, jobs, progress)
    wall_s = time.perf_counter() - start
    print(format_table(records))
    print()
    print(format_summary(records))
    print()
    print(textwrap.fill(f"{len(records)} compiles in {wall_s:.1f} s with {jobs} worker "
                        f"processes. {LEGEND}", width=92))
    if out:
        print("wrote " + " and ".join(write(records, out, jobs=jobs, wall_s=wall_s)))
    failing = [r for r in records if r.problems()]
    for r in failing:
        print(f"FAIL {r.where()}: {'; '.join(r.problems())}")
    if checked:
        print(checked.summary(known))
        for mismatch in checked.mismatches:
            print(f"FAIL {mismatch}")
    return 1 if failing or (checked and checked.mismatches) else 0
