"""Timing: every variant of a problem measured in the same process, one after the other
(median time, peak memory, TFLOP/s of useful work), with ratios to the problem's baseline.

How a call is timed (:func:`time_calls`): a first call (compiles, autotuning), then warm-up
by time, not by count; one synced call sizes the loop so that a sample lasts at least
``sample_s``; each sample is a loop of back-to-back calls between two timer marks, with no
host sync inside; the timer is read once, after the last sample. The median over samples,
divided by the calls per sample, is the time of one call. Beside it, the host's time to
issue one call (the same loop on the host clock): where it is close to or above the device
time, the table measures launch overhead, not the kernel.

The timer is an abstraction so that this code runs on CPU: :class:`CudaTimer` records CUDA
events; :class:`CpuTimer`, the CPU stand-in, reads ``perf_counter`` (CPU calls are
synchronous, so its device and host times are the same clock, and it says so)."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from mirasol.benchmark.lineup import Skipped, Variant, reason
from mirasol.benchmark.peaks import Peak
from mirasol.benchmark.problems import Setting


class CpuTimer:
    """The CPU stand-in: marks are ``perf_counter`` readings (a CPU call has finished when it
    returns, so there is nothing to wait for)."""
    name = "perf_counter (CPU stand-in: host and device are one clock)"

    def mark(self) -> float:
        return time.perf_counter()

    def sync(self) -> None:
        pass

    def ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


class CudaTimer:
    """CUDA events on the current stream; :meth:`ms` is valid after :meth:`sync`."""
    name = "CUDA events"

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        torch.cuda.synchronize()

    def ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)


def timer_for(device: str) -> CpuTimer | CudaTimer:
    return CudaTimer() if device.startswith("cuda") else CpuTimer()


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up (after a first call), how long one sample lasts at least, and how
    many samples."""
    warmup_s: float = 0.1
    sample_s: float = 0.02
    samples: int = 5
    max_calls: int = 10_000  # per sample: bounds a sample of a call measured as ~0


@dataclass(frozen=True)
class Timing:
    device_ms: float        # median over samples of one call's time on the timer
    host_ms: float          # median host time to issue one call (no sync)
    calls: int              # calls per sample
    samples: int
    warmup_calls: int


def time_calls(fn: Callable[[], object], timer, policy: TimingPolicy = TimingPolicy()
               ) -> Timing:
    """Time ``fn`` as described in the module docstring."""
    fn()  # compiles, autotunes, allocates: the warm-up's time starts after it
    timer.sync()
    warmup_calls, start = 1, time.perf_counter()
    while time.perf_counter() - start < policy.warmup_s:
        fn()
        warmup_calls += 1
    timer.sync()
    first = timer.mark()
    fn()
    last = timer.mark()
    timer.sync()
    one_ms = max(timer.ms(first, last), 1e-6)
    calls = min(policy.max_calls, max(1, math.ceil(policy.sample_s * 1e3 / one_ms)))
    marks, host = [], []
    for _ in range(policy.samples):
        host_start = time.perf_counter()
        first = timer.mark()
        for _ in range(calls):
            fn()
        marks.append((first, timer.mark()))
        host.append((time.perf_counter() - host_start) * 1e3 / calls)
    timer.sync()
    device = [timer.ms(a, b) / calls for a, b in marks]
    return Timing(statistics.median(device), statistics.median(host), calls, policy.samples,
                  warmup_calls)


def host_syncs(fn: Callable[[], object], device: str) -> int | None:
    """How many synchronizing CUDA operations one call makes (torch's sync debug mode, on
    CUDA only; None elsewhere)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def sm_clock_mhz(device: str) -> tuple[int | None, str]:
    """The SM clock now, in MHz, and how it was read (or why it could not be)."""
    if not device.startswith("cuda"):
        return None, "n/a on CPU"
    try:
        return int(torch.cuda.clock_rate()), "torch.cuda.clock_rate"
    except Exception as e:  # noqa: BLE001 -- needs pynvml; nvidia-smi is the fallback
        why = reason(e)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, f"{why}; no nvidia-smi"
    index = torch.cuda.current_device()
    try:
        out = subprocess.run([smi, f"--id={index}", "--query-gpu=clocks.sm",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return int(out.strip().splitlines()[0]), "nvidia-smi"
    except Exception as e:  # noqa: BLE001 -- recorded as the reason there is no reading
        return None, f"{why}; nvidia-smi: {reason(e)}"


@dataclass
class Measurement:
    name: str
    mode: str                 # "fwd" or "fwd+bwd"
    median_ms: float          # one call, on the timer (CUDA events on GPU)
    peak_mib: float | None    # memory the call added at its peak
    tflops: float
    ratio: float | None = None      # time / baseline time
    mem_ratio: float | None = None  # peak / baseline peak
    note: str = ""
    peak_fraction: float | None = None  # tflops / the card's dense peak (Table.peak)
    host_ms: float | None = None    # host time to issue one call
    calls: int = 1                  # calls per timed sample
    samples: int = 1
    host_syncs: int | None = None   # synchronizing CUDA operations in one call (CUDA only)
    sync_free: bool = False         # the variant promises no host sync (see Variant)
    # CUDA only: the host took about as long to issue a call as the device to run it, so
    # the time is the launch overhead's, an upper bound on the kernels'.
    host_bound: bool | None = None

    @property
    def failed(self) -> str:
        """Why this row fails the run ("" if it does not): a host sync it promised not to
        make."""
        if self.sync_free and self.host_syncs:
            return f"{self.host_syncs} host sync(s) in a call that promises none"
        return ""


@dataclass
class Table:
    title: str
    setting: Setting
    device_name: str
    baseline: str
    rows: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    peak: Peak | None = None  # None: no fraction column (CPU); Peak(None, why): "n/a"
    failed: list[Skipped] = field(default_factory=list)  # our own variants that raised
    timer: str = ""
    clocks: list[dict] = field(default_factory=list)  # SM clock before and after each mode
    # The share of the (query, key) grid the problem's mask lets through (None: not given).
    visible_fraction: float | None = None
    # The problem's targets (lineup.Target) as measured: see target_results.
    targets: list[dict] = field(default_factory=list)


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
    """The median of ``reps`` single synced calls after ``warmup`` calls: for whole-model
    steps (tens of ms and more), where launch overhead does not matter."""
    for _ in range(warmup):
        fn()
    timer = timer_for(device)
    times = []
    for _ in range(reps):
        timer.sync()
        start = time.perf_counter()
        fn()
        timer.sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# Host time per call at or above this fraction of the device time: the queue ran empty.
HOST_BOUND = 0.9


def measure(variant: Variant, problem, *, backward: bool,
            policy: TimingPolicy = TimingPolicy()) -> Measurement:
    """Time the variant's forward (and backward) on its inputs, inside its context."""
    device = problem.setting.device
    with variant.context() if variant.context else contextlib.nullcontext():
        args = variant.inputs(backward)
        leaves = [t for t in args if t.requires_grad]
        grad_out = None
        if backward:
            # The first call in the measured mode gives the gradient's shape: a no_grad
            # probe would be one more compile of a compiled variant.
            out = variant.fn(*args)
            grad_out = torch.randn_like(out.detach())
            out.backward(grad_out)
            del out

        def call():
            if backward:
                variant.fn(*args).backward(grad_out)
                for t in leaves:
                    t.grad = None
            else:
                with torch.no_grad():
                    variant.fn(*args)

        timing = time_calls(call, timer_for(device), policy)
        syncs = host_syncs(call, device)
        memory = peak_mib(call, device)
    tflops = problem.flops(backward) / (timing.device_ms * 1e-3) / 1e12
    return Measurement(variant.name, "fwd+bwd" if backward else "fwd", timing.device_ms,
                       memory, tflops, note=variant.note, host_ms=timing.host_ms,
                       calls=timing.calls, samples=timing.samples, host_syncs=syncs,
                       sync_free=variant.sync_free,
                       host_bound=(timing.host_ms >= HOST_BOUND * timing.device_ms
                                   if device.startswith("cuda") else None))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or "unknown CPU"."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def device_label(device: str) -> str:
    """The device as tables name it: the CUDA card's name, or the CPU's model and threads
    (CPU tables differ by model as much as GPU tables by card)."""
    return (torch.cuda.get_device_name() if device.startswith("cuda")
            else f"CPU ({cpu_name()}), {torch.get_num_threads()} threads")


def target_results(table: Table, targets) -> list[dict]:
    """Each :class:`~mirasol.benchmark.lineup.Target` against the table's rows: the two
    medians, their ratio and whether it meets the goal (None: no goal, or a row missing,
    said in ``missing``)."""
    results = []
    for t in targets:
        rows = {m.name: m for m in table.rows if m.mode == t.mode}
        mine, theirs = rows.get(t.variant), rows.get(t.against)
        ratio = mine.median_ms / theirs.median_ms if mine and theirs else None
        results.append({
            "mode": t.mode, "variant": t.variant, "against": t.against,
            "variant_ms": mine.median_ms if mine else None,
            "against_ms": theirs.median_ms if theirs else None, "ratio": ratio,
            "at_most": t.at_most, "source": t.source,
            "met": None if ratio is None or t.at_most is None else ratio <= t.at_most,
            "missing": ", ".join(n for n, m in ((t.variant, mine), (t.against, theirs))
                                 if m is None)})
    return results


def run(problem, *, reps: int = 5, modes=None, peak: Peak | None = None,
        progress: Callable[[str], None] | None = None,
        policy: TimingPolicy | None = None,
        started: Callable[[Table], None] | None = None) -> Table:
    """Measure every variant in every mode; ratios are against the problem's baseline.

    ``modes``: default the problem's ``modes`` (fwd and fwd+bwd when it has none); a
    forward-only variant's fwd+bwd is listed as skipped. ``reps``: samples per measurement
    (``policy`` overrides it). An optional variant (a
    rival) that raises is listed in ``Table.skipped``; one of ours that raises is listed in
    ``Table.failed`` with its traceback, and the other variants still run. ``started`` is
    given the table before the first measurement: its rows are appended as they are
    measured, so a caller that is cut short still holds what was measured. ``progress`` gets
    each row as text, with its numbers."""
    policy = policy or TimingPolicy(samples=reps)
    modes = modes or getattr(problem, "modes", ("fwd", "fwd+bwd"))
    say = progress or (lambda message: None)
    baseline, variants, skipped = problem.variants()
    device = problem.setting.device
    fraction = getattr(problem, "visible_fraction", None)
    table = Table(problem.title, problem.setting, device_label(device), baseline,
                  skipped=list(skipped), peak=peak, timer=timer_for(device).name,
                  visible_fraction=fraction() if fraction else None)
    if started:
        started(table)
    for mode in modes:
        clock_before = sm_clock_mhz(device)
        measured = []
        for variant in variants:
            if mode != "fwd" and variant.forward_only:
                table.skipped.append(Skipped(variant.name, mode, variant.forward_only))
                continue
            try:
                m = measure(variant, problem, backward=mode == "fwd+bwd", policy=policy)
            except Exception as e:  # noqa: BLE001 -- a row of its own; the table goes on
                entry = Skipped(variant.name, mode, reason(e), traceback.format_exc())
                (table.skipped if variant.optional else table.failed).append(entry)
                say(f"{mode:8s} {variant.name}: {'skipped' if variant.optional else 'FAILED'}"
                    f": {entry.reason}")
                if not variant.optional:
                    print(entry.traceback, file=sys.stderr, flush=True)
                continue
            measured.append(m)
            table.rows.append(m)
            say(f"{mode:8s} {m.name}: {m.median_ms:.4f} ms (host {m.host_ms:.4f} ms/call, "
                f"{m.calls} calls x {m.samples}), {m.tflops:.3f} TFLOP/s"
                + (f", {m.host_syncs} host syncs" if m.host_syncs else ""))
        clock_after = sm_clock_mhz(device)
        table.clocks.append({"mode": mode, "before_mhz": clock_before[0],
                             "after_mhz": clock_after[0], "source": clock_after[1]})
        base = next((m for m in measured if m.name == baseline), None)
        for m in measured:
            if base is not None:
                m.ratio = m.median_ms / base.median_ms
                if m.peak_mib is not None and base.peak_mib:
                    m.mem_ratio = m.peak_mib / base.peak_mib
            if peak is not None and peak.tflops:
                m.peak_fraction = m.tflops / peak.tflops
    table.targets = target_results(table, getattr(problem, "targets", ()))
    return table
