"""Side-by-side benchmarks of chunked causal attention (``mirasol bench``, bench/).

Every variant of a table runs in the same process on the same inputs, one after the other,
and the table reports each one's median time and peak memory and its ratio to a baseline:
ratios, not absolute times, are what survive a noisy machine.

CPU (default): the torch backend against SDPA with a dense boolean mask (the usual way to
express this pattern) and against unmasked SDPA (all N^2 scores, for scale).
CUDA: the triton backend against FlexAttention (compiled, the same block mask), SDPA with a
dense mask, and flash-attn's causal kernel where installed; TFLOP/s count only the visible
(computed) scores.
"""

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
import torch.nn.functional as F

from mirasol._format import format_rows
from mirasol.ops import chunked_causal_attention
from mirasol.reference import chunked_causal_mask


@dataclass(frozen=True)
class Problem:
    batch: int = 1
    heads: int = 8
    seqlen: int = 4096
    head_dim: int = 64
    chunk_size: int = 256
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    def inputs(self, requires_grad: bool) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        shape = (self.batch, self.heads, self.seqlen, self.head_dim)
        return tuple(torch.randn(shape, generator=gen).to(self.device, self.dtype)
                     .requires_grad_(requires_grad) for _ in range(3))

    def visible_pairs(self) -> int:
        """(query, key) pairs the chunked mask lets through, per batch*head."""
        chunks, last = divmod(self.seqlen, self.chunk_size)
        full = sum(self.chunk_size * (t + 1) * self.chunk_size for t in range(chunks))
        return full + last * self.seqlen

    def flops(self, backward: bool) -> float:
        # 2 matmuls forward (QK^T, PV), 5 with the backward (recompute QK^T, dV, dP, dQ, dK).
        per_pair = 4 * self.head_dim * (1 + (2.5 if backward else 0))
        return self.batch * self.heads * self.visible_pairs() * per_pair


@dataclass
class Measurement:
    name: str
    mode: str                 # "fwd" or "fwd+bwd"
    median_ms: float
    peak_mib: float | None    # memory the call added at its peak
    tflops: float | None = None
    ratio: float | None = None      # time / baseline time
    mem_ratio: float | None = None  # peak / baseline peak
    note: str = ""


@dataclass
class Table:
    problem: Problem
    device_name: str
    baseline: str
    rows: list[Measurement] = field(default_factory=list)


# ------------------------------------------------------------------------- measuring


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


def _peak_mib(fn: Callable[[], object], device: str) -> float | None:
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


def _median_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
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


def measure(name: str, fwd: Callable, problem: Problem, *, backward: bool, reps: int = 5,
            warmup: int = 1, note: str = "") -> Measurement:
    """Time ``fwd(q, k, v)`` (and its backward) on the problem's inputs."""
    q, k, v = problem.inputs(requires_grad=backward)
    do = torch.randn_like(q) if backward else None

    def call():
        if backward:
            out = fwd(q, k, v)
            out.backward(do)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                fwd(q, k, v)

    median = _median_ms(call, problem.device, reps, warmup)
    peak = _peak_mib(call, problem.device)
    tflops = problem.flops(backward) / (median * 1e-3) / 1e12
    return Measurement(name, "fwd+bwd" if backward else "fwd", median, peak, tflops, note=note)


# ----------------------------------------------------------------------- the variants


def _sdpa_dense_mask(problem: Problem) -> Callable:
    mask = chunked_causal_mask(problem.seqlen, problem.chunk_size, problem.device)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flex(problem: Problem) -> Callable | None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    size = problem.chunk_size

    def chunked(b, h, q_idx, kv_idx):
        return kv_idx // size <= q_idx // size

    block_mask = create_block_mask(chunked, None, None, problem.seqlen, problem.seqlen,
                                   device=problem.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def _flash_attn_causal() -> Callable | None:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    # flash-attn takes (B, N, H, D); plain causal does as much work as chunk size 1.
    return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), causal=True).transpose(1, 2)


def variants(problem: Problem) -> tuple[str, list[tuple[str, Callable, str]]]:
    """(baseline name, [(name, fn(q, k, v), note)]) for the problem's device."""
    C = problem.chunk_size
    ours = ("mirasol torch" if problem.device == "cpu" else "mirasol triton")
    backend = "torch" if problem.device == "cpu" else "triton"
    rows = [
        (ours, lambda q, k, v: chunked_causal_attention(q, k, v, C, backend=backend), ""),
        ("SDPA dense mask", _sdpa_dense_mask(problem), "N x N bool mask"),
        ("SDPA unmasked", lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
         "all N^2 scores"),
    ]
    if problem.device != "cpu":
        flex = _flex(problem)
        if flex is not None:
            rows.insert(1, ("FlexAttention", flex, "compiled, same block mask"))
        flash = _flash_attn_causal()
        if flash is not None:
            rows.append(("flash-attn causal", flash, "token-causal, not chunked"))
    return "SDPA dense mask", rows


def run(problem: Problem, *, reps: int = 5, modes=("fwd", "fwd+bwd"),
        progress: Callable[[str], None] | None = None) -> Table:
    """Measure every variant in every mode; ratios are against the dense-mask SDPA."""
    baseline, rows = variants(problem)
    device_name = (torch.cuda.get_device_name() if problem.device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} threads")
    table = Table(problem, device_name, baseline)
    for mode in modes:
        measured = []
        for name, fn, note in rows:
            if progress:
                progress(f"{mode:8s} {name}")
            measured.append(measure(name, fn, problem, backward=mode == "fwd+bwd", reps=reps,
                                    note=note))
        base = next(m for m in measured if m.name == baseline)
        for m in measured:
            m.ratio = m.median_ms / base.median_ms
            if m.peak_mib is not None and base.peak_mib:
                m.mem_ratio = m.peak_mib / base.peak_mib
        table.rows.extend(measured)
    return table


def format_table(table: Table) -> str:
    p = table.problem
    head = (f"chunked causal attention: B={p.batch} H={p.heads} N={p.seqlen} D={p.head_dim} "
            f"chunk={p.chunk_size} {str(p.dtype).removeprefix('torch.')} on {table.device_name}"
            f"\nratios are against {table.baseline!r}, measured side by side in this run "
            f"(medians of the runs)")
    cells = [("mode", "variant", "median ms", "x time", "peak MiB", "x memory", "TFLOP/s",
              "note")]
    for m in table.rows:
        cells.append((m.mode, m.name, f"{m.median_ms:.1f}", f"{m.ratio:.2f}",
                      "n/a" if m.peak_mib is None else f"{m.peak_mib:.0f}",
                      "n/a" if m.mem_ratio is None else f"{m.mem_ratio:.2f}",
                      f"{m.tflops:.2f}", m.note))
    return head + "\n" + format_rows(cells)
