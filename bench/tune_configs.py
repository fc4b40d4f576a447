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

The table serves every triton pyproject.toml admits, and CI gates it under the oldest and
the newest (tests/test_oldest_triton.py, tests/test_cross_compile.py). Registers differ
between them (3.6 spills where 3.9 does not, and the other way round), so an entry must fit
under both: ``--also .venv-triton36/bin/python`` checks each candidate there as well (this
script run by that python with ``--fits``).
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
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton

# Compiling needs real @triton.jit functions: the kernels must not be defined under the
# interpreter.
os.environ.pop("TRITON_INTERPRET", None)

from mirasol.kernels import KernelConfig, arch_family  # noqa: E402
from mirasol.kernels._launch import FIXED_CONFIGS, override_config  # noqa: E402
from mirasol.kernels.aot.archs import ARCHS  # noqa: E402
from mirasol.kernels.aot.cubin import resources  # noqa: E402
from mirasol.kernels.aot.registry import KERNELS, OPS  # noqa: E402


def _families() -> dict[str, tuple[int, ...]]:
    """The archs of each table family (kernels/_launch.arch_family): a family's entry must
    fit every one of them."""
    families: dict[str, tuple[int, ...]] = {}
    for arch in ARCHS:
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


def _fits(kernel, family, dtypes, head_dim, config) -> bool:
    op = OPS[KERNELS[kernel]]
    variants = op.variants[:1] if kernel in op.variant_free else op.variants
    for arch, variant, dtype in itertools.product(FAMILIES[family], reversed(variants), dtypes):
        # The other kernels of the op are built too (not compiled): any config will do,
        # including for a kernel the table does not know yet.
        with contextlib.ExitStack() as stack:
            for other in KERNELS:
                stack.enter_context(override_config(other, KernelConfig(16, 16)))
            stack.enter_context(override_config(kernel, config))
            launch = op.launches(divmod(arch, 10), dtype, head_dim, variant)[kernel]
        res = resources(launch, arch)
        if res.spills or res.shared_bytes > ARCHS[arch].shared_per_block:
            return False
    return True


def _fits_under(python: str, job, config) -> bool:
    """:func:`_fits` of ``job`` (kernel, family, dtype class, size) in another environment
    (another triton): this script run by ``python`` with ``--fits``."""
    fields = [config.block_m, config.block_n, config.num_warps, config.num_stages]
    run = subprocess.run([python, __file__, "--fits", json.dumps([list(job), fields])],
                         capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise RuntimeError(f"{python} --fits failed:\n{run.stderr[-2000:]}")
    return run.returncode == 0


def _triton_version(python: str) -> str:
    return subprocess.run([python, "-c", "import triton; print(triton.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _sizes(kernel: str) -> tuple[int, ...]:
    """The table's last key: the padded head dim for attention, the padded number of
    output tokens for token pooling."""
    return OPS[KERNELS[kernel]].buckets


def _current(kernel, family, dclass, head_dim):
    from mirasol.kernels._configs import TABLE

    return TABLE.get(kernel, {}).get(family, {}).get(dclass, {}).get(head_dim)


def tune(job, resume: bool = True, cache: str | None = None, also: tuple[str, ...] = (),
         tritons: tuple[str, ...] = ()):
    """The first candidate of ``job`` that fits here and under each python of ``also``
    (whose tritons, with this one's, are ``tritons``): (job, config) or (job, None)."""
    kernel, family, dclass, head_dim = job
    dtypes = DTYPES[dclass]
    limit = min(ARCHS[a].shared_per_block for a in FAMILIES[family])
    candidates = list(_candidates(kernel, head_dim, dtypes[0].itemsize, limit))
    # The kernels only grow more constrained between runs as a rule: start from the
    # current entry, whose larger predecessors were already rejected.
    current = _current(*job)
    keys = [(c.block_m, c.block_n, c.num_warps, c.num_stages) for c in candidates]
    if resume and current in keys:
        candidates = candidates[keys.index(current):]
    for config in candidates:
        if _fits(kernel, family, dtypes, head_dim, config) and all(
                _fits_under(python, job, config) for python in also):
            print(f"{kernel} {family} {dclass} d<={head_dim}: {config}", flush=True)
            found = (config.block_m, config.block_n, config.num_warps, config.num_stages)
            if cache:
                with open(cache, "a") as f:
                    f.write(json.dumps([list(job), found, FAMILIES[family], list(tritons)])
                            + "\n")
            return job, found
    print(f"{kernel} {family} {dclass} d<={head_dim}: NO spill-free config", flush=True)
    return job, None


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
    parser.add_argument("--also", nargs="+", default=[], metavar="PYTHON",
                        help="a config must fit under these environments' tritons as well "
                             "(e.g. .venv-triton36/bin/python)")
    parser.add_argument("--fits", help=argparse.SUPPRESS)  # --also's worker: exit 0 if it fits
    args = parser.parse_args()
    if args.fits:
        (kernel, family, dclass, size), config = json.loads(args.fits)
        raise SystemExit(0 if _fits(kernel, family, DTYPES[dclass], size,
                                    KernelConfig(*config)) else 1)
    tritons = tuple(sorted({triton.__version__, *map(_triton_version, args.also)}))
    jobs = [(kernel, family, dclass, size) for kernel in TUNED
            for family, dclass, size in itertools.product(FAMILIES, DTYPES, _sizes(kernel))]
    results = {}
    if args.cache and os.path.exists(args.cache):  # results of an interrupted run
        for line in open(args.cache):
            job, found, *tuned_for = json.loads(line)
            # not tuned for another arch_family, or under other tritons
            if tuned_for == [list(FAMILIES[job[1]]), list(tritons)]:
                results[tuple(job)] = tuple(found)
    # The families and kernels not retuned keep their table entries (or, new, the cache's).
    results.update({job: _current(*job) for job in jobs if _current(*job) and (
        (args.family and job[1] != args.family) or (args.kernel and job[0] not in args.kernel))})
    todo = [job for job in jobs if job not in results]
    with ProcessPoolExecutor(args.jobs) as pool:
        results.update(pool.map(functools.partial(tune, resume=not args.from_scratch,
                                                  cache=args.cache, also=tuple(args.also),
                                                  tritons=tritons), todo))
    missing = [job for job in jobs if results.get(job) is None]
    if missing:
        raise SystemExit(f"no spill-free config for {missing}; table not written")
    table = {k: {f: {d: {h: results[(k, f, d, h)] for h in _sizes(k)} for d in DTYPES}
                 for f in FAMILIES} for k in TUNED}
    text = pprint.pformat(table, width=92, sort_dicts=False)
    Path(args.out).write_text(
        '"""Tile configs (block_m, block_n, num_warps, num_stages) per kernel, GPU family, dtype\n'
        'class ("half": fp16/bf16, "fp32") and head-dim bucket (the padded head dim). Generated\n'
        'by bench/tune_configs.py: each is the largest tile that cross-compiles with no register\n'
        'spills within shared memory on every arch of its family, under the triton(s) of the\n'
        'run that chose it (--also). Do not edit by hand; rerun the tool."""\n\n'
        f"TABLE = {text}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
