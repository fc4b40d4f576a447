"""Timing: every variant of a problem measured in the same process, one after the other
(median time, peak memory, TFLOP/s of useful work), with ratios to the problem's baseline."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from mirasol.benchmark.lineup import Skipped, Variant, reason
from mirasol.benchmark.peaks import Peak
from mirasol.benchmark.problems import Setting


@dataclass
class Measurement:
    name: str
    mode: str                 # "fwd" or "fwd+bwd"
    median_ms: float
    peak_mib: float | None    # memory the call added at its peak
    tflops: float
    ratio: float | None = None      # time / baseline time
    mem_ratio: float | None = None  # peak / baseline peak
    note: str = ""
    peak_fraction: float | None = None  # tflops / the card's dense peak (Table.peak)


@dataclass
class Table:
    title: str
    setting: Setting
    device_name: str
    baseline: str
    rows: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    peak: Peak | None = None  # None: no fraction column (CPU); Peak(None, why): "n/a"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    # The profiler's C++ side logs a line to fd 2 at every start and stop.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_mib(fn: Callable[[], object], device: str) -> float | None:
    """Memory the call adds at its peak, as PyTorch's allocator sees it: CUDA allocator
    stats on GPU; on CPU, the allocation timeline recorded by the profiler (every tensor,
    including those allocated inside fused ops). None where neither is available."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                     profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def median_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(variant: Variant, problem, *, backward: bool, reps: int = 5,
            warmup: int = 1) -> Measurement:
    """Time the variant's forward (and backward) on its inputs."""
    args = variant.inputs(backward)
    leaves = [t for t in args if t.requires_grad]
    with torch.no_grad():
        grad_out = torch.randn_like(variant.fn(*args)) if backward else None

    def call():
        if backward:
            variant.fn(*args).backward(grad_out)
            for t in leaves:
                t.grad = None
        else:
            with torch.no_grad():
                variant.fn(*args)

    device = problem.setting.device
    median = median_ms(call, device, reps, warmup)
    tflops = problem.flops(backward) / (median * 1e-3) / 1e12
    return Measurement(variant.name, "fwd+bwd" if backward else "fwd", median,
                       peak_mib(call, device), tflops, note=variant.note)


def device_label(device: str) -> str:
    """The device as tables name it: the CUDA card's name, or the CPU and its threads."""
    return (torch.cuda.get_device_name() if device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads")


def run(problem, *, reps: int = 5, modes=("fwd", "fwd+bwd"), peak: Peak | None = None,
        progress: Callable[[str], None] | None = None) -> Table:
    """Measure every variant in every mode; ratios are against the problem's baseline. An
    optional variant (a rival) that raises is listed in ``Table.skipped`` with the reason;
    any other failure propagates. With ``peak``, each row also gets its fraction of it."""
    baseline, variants, skipped = problem.variants()
    table = Table(problem.title, problem.setting, device_label(problem.setting.device),
                  baseline, skipped=list(skipped), peak=peak)
    for mode in modes:
        measured = []
        for variant in variants:
            if progress:
                progress(f"{mode:8s} {variant.name}")
            try:
                measured.append(measure(variant, problem, backward=mode == "fwd+bwd",
                                        reps=reps))
            except Exception as e:  # noqa: BLE001 -- only rivals may fail; ours must raise
                if not variant.optional:
                    raise
                table.skipped.append(Skipped(variant.name, mode, reason(e)))
        base = next(m for m in measured if m.name == baseline)
        for m in measured:
            m.ratio = m.median_ms / base.median_ms
            if m.peak_mib is not None and base.peak_mib:
                m.mem_ratio = m.peak_mib / base.peak_mib
            if peak is not None and peak.tflops:
                m.peak_fraction = m.tflops / peak.tflops
        table.rows.extend(measured)
    return table
