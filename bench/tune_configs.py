"""Choose each kernel's tile config per GPU generation by cross-compiling (no GPU needed).

For every kernel, arch family, dtype class and head-dim bucket, walks candidates —
pipelined ones (2-3 stages) first, each group from the largest tile down, more warps and
stages first — and keeps the first that compiles with no register spills and within
shared memory on every arch of the family, for each specialization the ops launch
(kernels/aot/registry.py: padded with lengths, packed, packed causal;
grouped-query heads). Writes the table to kernels/_configs.py. A proxy for speed, not a
timing: retune on the GPU when one is at hand.

    python bench/tune_configs.py                 # all kernels (hours on 2 cores)
    python bench/tune_configs.py --family sm100  # one family; the others' entries are kept
    python bench/tune_configs.py --kernel attn_bwd_dkdv --family sm80   # one kernel's row
    python bench/tune_configs.py --jobs 2        # an interrupted run resumes from its --cache
    python bench/tune_configs.py --failing bench/results/profile.json   # what the gate flags

The table serves every triton pyproject.toml admits, and CI gates it under the oldest and
the newest (tests/test_oldest_triton.py, tests/test_cross_compile.py). Registers differ
between them (3.6 spills where 3.9 does not, and the other way round), so an entry must fit
under both: ``--also .venv-triton36/bin/python`` checks each candidate there as well (that
python runs this script with ``--serve``, once per worker). Where no candidate fits both,
each triton gets its own first fit: the newest's in TABLE, the others' in PER_TRITON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import pprint
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton

# Compiling needs real @triton.jit functions: the kernels must not be defined under the
# interpreter. FP fusion named as mirasol.profile's workers name it: triton 3.9's compile
# key holds the variable, so the tuner's compiles are the profile's and the gates' (one
# store entry for both).
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from mirasol import profile  # noqa: E402
from mirasol.kernels import KernelConfig, arch_family  # noqa: E402
from mirasol.kernels._launch import (FIXED_CONFIGS, override_config, table_entry,  # noqa: E402
                                     triton_minor)
from mirasol.kernels.aot.archs import ARCHS, GATE_ARCHS  # noqa: E402
from mirasol.kernels.aot.cubin import resources  # noqa: E402
from mirasol.kernels.aot.registry import KERNELS, OPS  # noqa: E402


def _families() -> dict[str, tuple[int, ...]]:
    """The gated archs of each table family (kernels/_launch.arch_family): a family's entry
    must fit every one of them. sm_89 is left out as the gates leave it out: it compiles to
    sm_86's code (kernels/aot/archs.GATE_ARCHS; tests/test_profile.py holds the profile to
    that)."""
    families: dict[str, tuple[int, ...]] = {}
    for arch in GATE_ARCHS:
        family = arch_family(divmod(arch, 10))
        families[family] = (*families.get(family, ()), arch)
    return families


FAMILIES = _families()
# The kernels of the table (the NaN repair passes have fixed configs: kernels/_launch.py).
TUNED = [kernel for kernel in KERNELS if kernel not in FIXED_CONFIGS]
# A dtype class's entry must fit each of its dtypes (bf16 and fp16 compile to different
# conversions and spill differently).
DTYPES = {"half": (torch.float16, torch.bfloat16), "fp32": (torch.float32,)}
TILES = [(128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (64, 32), (32, 64), (32, 32),
         (64, 16), (32, 16), (16, 32), (16, 16)]


def _estimate(kernel, m, n, warps, stages, head_dim, itemsize):
    """Registers per thread and shared bytes, roughly: prunes hopeless candidates before
    spending a compile on them. (For token pooling, m is the feature block, n the token
    block and head_dim the number of output tokens.)"""
    threads = 32 * warps
    row = head_dim * itemsize
    if kernel == "token_pool_fwd":
        regs = (head_dim * m + head_dim * n + n * m * itemsize / 4) / threads
        smem = stages * n * (m + head_dim) * itemsize
    elif kernel == "token_pool_bwd":
        regs = (3 * n * head_dim + head_dim * head_dim + 3 * m * head_dim) / threads
        smem = stages * (n + 2 * head_dim) * m * itemsize
    elif kernel == "attn_bwd_dkdv":  # n keys held, m queries streamed
        regs = (2 * n * head_dim * (1 + itemsize / 4) + 3 * m * n) / threads
        smem = stages * 2 * m * row + 2 * n * row
    elif kernel == "attn_bwd_dq":
        regs = (m * head_dim * (1 + itemsize / 2) + 3 * m * n) / threads
        smem = stages * 2 * n * row + 2 * m * row
    else:
        regs = (m * head_dim * (1 + itemsize / 4) + 2 * m * n) / threads
        smem = stages * 2 * n * row + m * row
    return regs, smem


def _candidates(kernel, head_dim, itemsize, limit):
    if kernel == "attn_bwd_delta":
        yield from (KernelConfig(m, 0, 4, 1) for m in (64, 32, 16))
        return
    # Software-pipelined configs first (one stage leaves every load's latency exposed),
    # then the largest tile, more warps, more stages.
    for stage_group in ((3, 2), (1,)):
        for (a, b), warps, stages in itertools.product(TILES, (8, 4), stage_group):
            m, n = (b, a) if kernel == "attn_bwd_dkdv" else (a, b)
            regs, smem = _estimate(kernel, m, n, warps, stages, head_dim, itemsize)
            # fp32 (no tensor cores) holds whole tiles in registers: small tiles may need
            # 8 warps.
            small_tile_ok = itemsize == 4 or not (warps == 8 and m * n < 64 * 32)
            if regs <= 200 and smem <= 1.05 * limit and small_tile_ok:
                yield KernelConfig(m, n, warps, stages)


# Per kernel, the compile (arch, variant, dtype) that last rejected a candidate: checked
# first, as it is the one that most often rejects the next (one compile per rejection
# instead of a walk through the specializations that fit).
_LAST_REJECTED: dict[str, tuple] = {}


def _fits(kernel, family, dtypes, head_dim, config) -> bool:
    op = OPS[KERNELS[kernel]]
    checks = list(itertools.product(FAMILIES[family], reversed(op.variants_of(kernel)),
                                    dtypes))
    checks.sort(key=lambda check: check != _LAST_REJECTED.get(kernel))
    for arch, variant, dtype in checks:
        # The other kernels of the op are built too (not compiled): any config will do,
        # including for a kernel the table does not know yet.
        with contextlib.ExitStack() as stack:
            for other in KERNELS:
                stack.enter_context(override_config(other, KernelConfig(16, 16)))
            stack.enter_context(override_config(kernel, config))
            launch = op.launches(divmod(arch, 10), dtype, head_dim, variant)[kernel]
        res = resources(launch, arch)
        if res.spills or res.shared_bytes > ARCHS[arch].shared_per_block:
            _LAST_REJECTED[kernel] = (arch, variant, dtype)
            return False
    return True


@functools.cache
def _server(python: str) -> subprocess.Popen:
    # One --serve process per environment and worker: its imports (torch, triton) load once.
    return subprocess.Popen([python, __file__, "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _fits_under(python: str, job, config) -> bool:
    """:func:`_fits` of ``job`` (kernel, family, dtype class, size) in another environment
    (another triton): this script run by ``python`` with ``--serve``."""
    server = _server(python)
    fields = [config.block_m, config.block_n, config.num_warps, config.num_stages]
    server.stdin.write(json.dumps([list(job), fields]) + "\n")
    server.stdin.flush()
    answer = server.stdout.readline().strip()
    if answer not in ("0", "1"):
        raise RuntimeError(f"{python} --serve stopped (exit {server.poll()})")
    return answer == "1"


def _serve() -> None:
    """--serve: answer "1" (fits) or "0" for each JSON line [job, config fields] on stdin."""
    for line in sys.stdin:
        (kernel, family, dclass, size), config = json.loads(line)
        fits = _fits(kernel, family, DTYPES[dclass], size, KernelConfig(*config))
        print(int(fits), flush=True)


def _triton_version(python: str) -> str:
    """The ``major.minor`` triton of another environment (the table's per-triton key)."""
    return triton_minor(subprocess.run(
        [python, "-c", "import triton; print(triton.__version__)"],
        capture_output=True, text=True, check=True).stdout.strip())


def _sizes(kernel: str) -> tuple[int, ...]:
    """The table's last key: the padded head dim for attention, the padded number of
    output tokens for token pooling."""
    return OPS[KERNELS[kernel]].buckets


def _current(kernel, family, dclass, head_dim, version=None):
    """The table's entry for a job, under triton ``version`` (``major.minor``) where the table
    gives that triton its own, else the shared one."""
    return table_entry(kernel, family, dclass, head_dim, version)


def tune(job, resume: bool = True, cache: str | None = None,
         pythons: dict[str, str | None] | None = None):
    """The first candidate of ``job`` that fits under every triton of ``pythons`` (``major.
    minor`` -> the environment's python, None for this one); where none fits them all, each
    triton's own first. Returns (job, {triton: config fields}), the same config for every
    triton where one serves them all, or (job, None) where some triton has none."""
    kernel, family, dclass, head_dim = job
    pythons = pythons or {triton_minor(): None}
    dtypes = DTYPES[dclass]
    limit = min(ARCHS[a].shared_per_block for a in FAMILIES[family])
    candidates = list(_candidates(kernel, head_dim, dtypes[0].itemsize, limit))
    # The kernels only grow more constrained between runs as a rule: start from the
    # current (shared) entry, whose larger predecessors were already rejected.
    current = _current(*job)
    keys = [(c.block_m, c.block_n, c.num_warps, c.num_stages) for c in candidates]
    if resume and current in keys:
        candidates = candidates[keys.index(current):]

    def fits(config, version):
        python = pythons[version]
        if python is None:
            return _fits(kernel, family, dtypes, head_dim, config)
        return _fits_under(python, job, config)

    def found(configs):
        picked = {v: (c.block_m, c.block_n, c.num_warps, c.num_stages)
                  for v, c in configs.items()}
        print(f"{kernel} {family} {dclass} d<={head_dim}: {picked}", flush=True)
        if cache:
            with open(cache, "a") as f:
                f.write(json.dumps([list(job), picked, FAMILIES[family]]) + "\n")
        return job, picked

    first = {}  # each triton's own first fit, for where no config serves them all
    for config in candidates:
        common = True
        for version in pythons:
            if common or version not in first:  # else nothing left to learn here
                if fits(config, version):
                    first.setdefault(version, config)
                else:
                    common = False
        if common:
            return found({version: config for version in pythons})
    if len(first) == len(pythons):
        return found(first)
    print(f"{kernel} {family} {dclass} d<={head_dim}: NO spill-free config under triton "
          f"{', '.join(v for v in pythons if v not in first)}", flush=True)
    return job, None


def _failing(paths) -> set[tuple[str, str, str, int]]:
    """The jobs of the table entries that compile with a problem in any of these profiles
    (`mirasol profile --out`)."""
    classes = {dtype: dclass for dclass, dtypes in DTYPES.items() for dtype in dtypes}
    return {(r.kernel, r.family, classes[getattr(torch, r.dtype)],
             min(b for b in _sizes(r.kernel) if b >= r.size))  # head dim 80: the 128 entry
            for path in paths for r in profile.load(path)[1]
            if r.problems() and r.kernel in TUNED}


def _pformat(table) -> str:
    return pprint.pformat(table, width=92, sort_dicts=False)


def write_table(results, path) -> None:
    """kernels/_configs.py from ``{job: {triton: config}}``: TABLE holds each job's config
    where one serves every triton, else the newest triton's; PER_TRITON the older tritons'
    own where they differ."""
    newest = max(next(iter(results.values())), key=lambda v: tuple(map(int, v.split("."))))
    table, per_triton = {}, {}
    for (kernel, family, dclass, size), configs in results.items():
        shared = configs[newest]
        table.setdefault(kernel, {}).setdefault(family, {}).setdefault(dclass, {})[size] = shared
        for version, config in configs.items():
            if config != shared:
                (per_triton.setdefault(version, {}).setdefault(kernel, {})
                 .setdefault(family, {}).setdefault(dclass, {}))[size] = config
    Path(path).write_text(
        '"""Tile configs (block_m, block_n, num_warps, num_stages) per kernel, GPU family, dtype\n'
        'class ("half": fp16/bf16, "fp32") and head-dim bucket (the padded head dim). Generated\n'
        'by bench/tune_configs.py: each is the largest tile that cross-compiles with no register\n'
        'spills within shared memory on every arch of its family, under every triton of the run\n'
        'that chose it (--also). TABLE is shared; where no config serves every triton, TABLE\n'
        'holds the newest\'s and PER_TRITON ("major.minor" -> entries like TABLE\'s) the\n'
        'others\' own. Do not edit by hand; rerun the tool."""\n\n'
        f"TABLE = {_pformat(table)}\n\nPER_TRITON = {_pformat(per_triton)}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=Path(__file__).parents[1] / "kernels" / "_configs.py")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "mirasol-tune.jsonl"),
                        help="found configs are appended here, and reused by a rerun")
    parser.add_argument("--from-scratch", action="store_true",
                        help="search from the largest tile, not from the current table entry")
    parser.add_argument("--family", choices=list(FAMILIES),
                        help="retune this family only, keeping the other families' entries")
    parser.add_argument("--kernel", choices=list(TUNED), nargs="+",
                        help="retune these kernels only, keeping the other kernels' entries")
    parser.add_argument("--failing", nargs="+", metavar="PROFILE_JSON",
                        help="retune only the entries that fail the gate in these profiles "
                             "(mirasol profile --out, under any triton), keeping the others")
    parser.add_argument("--also", nargs="+", default=[], metavar="PYTHON",
                        help="a config must fit under these environments' tritons as well "
                             "(e.g. .venv-triton36/bin/python)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # --also's
    args = parser.parse_args()
    if args.serve:
        return _serve()
    # The other environments first: in the failures this tool exists for, they reject the
    # candidates this one accepts.
    pythons = {**{_triton_version(p): p for p in args.also}, triton_minor(): None}
    jobs = [(kernel, family, dclass, size) for kernel in TUNED
            for family, dclass, size in itertools.product(FAMILIES, DTYPES, _sizes(kernel))]
    results = {}
    if args.cache and os.path.exists(args.cache):  # results of an interrupted run
        for line in open(args.cache):
            job, found, archs, *_ = json.loads(line)
            # not tuned for another arch_family, or under other tritons (or by an older tool)
            if (archs == list(FAMILIES[job[1]]) and isinstance(found, dict)
                    and sorted(found) == sorted(pythons)):
                results[tuple(job)] = {v: tuple(c) for v, c in found.items()}
    # The entries not retuned keep the table's (or, new, the cache's).
    failing = _failing(args.failing) if args.failing else None
    kept = {job for job in jobs if _current(*job) and (
        (args.family and job[1] != args.family) or (args.kernel and job[0] not in args.kernel)
        or (failing is not None and job not in failing))}
    results.update({job: {v: _current(*job, v) for v in pythons} for job in kept})
    todo = [job for job in jobs if job not in results]
    with ProcessPoolExecutor(args.jobs) as pool:
        results.update(pool.map(functools.partial(tune, resume=not args.from_scratch,
                                                  cache=args.cache, pythons=pythons), todo))
    missing = [job for job in jobs if results.get(job) is None]
    if missing:
        raise SystemExit(f"no spill-free config for {missing}; table not written")
    write_table({job: results[job] for job in jobs}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
