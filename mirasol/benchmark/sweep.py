"""The sweep (``mirasol bench --sweep``): chunked causal attention over a grid of sequence
lengths x chunk sizes, each point a table of its own (:func:`~mirasol.benchmark.timing.run`:
mirasol's backend beside SDPA with the dense mask, token-causal SDPA, unmasked SDPA and,
where they run, the rivals; on CPU FlexAttention compiled, forward only), fwd and fwd+bwd,
all in one process. The summary gives, per point and mode, each variant's time, the ratio
of mirasol's time to the best PyTorch composite (the faster of dense-masked and causal
SDPA), mirasol's achieved rate on the visible pairs against causal SDPA's on its own, and
the plan the torch backend chose there (:func:`mirasol.ops._pieces.describe`). ``--plot
DIR`` draws time and GFLOP/s against N, a panel per chunk size, a line per variant, in the
manner of ``triton.testing.perf_report``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mirasol.benchmark.problems import ChunkedProblem, Setting
from mirasol.benchmark.timing import Table, run

SEQLENS = (64, 256, 1024, 4096, 16384)
CHUNKS = (8, 32, 128, 512)
# The PyTorch composites mirasol must not be slower than, and the rate it is held to.
COMPOSITES = ("SDPA dense mask", "SDPA causal")
CAUSAL = "SDPA causal"


@dataclass
class Point:
    seqlen: int
    chunk: int
    mode: str
    ms: dict[str, float]        # variant -> median ms
    gflops: dict[str, float]    # variant -> GFLOP/s on its own visible pairs
    plan: str                   # the torch backend's plan here ("" for triton)
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why
    mask_ms: float | None = None  # FlexAttention's BlockMask build, not in its time

    @property
    def ours(self) -> str:
        return next(name for name in self.ms if name.startswith("mirasol"))

    @property
    def vs_best(self) -> float:
        """mirasol's time over the faster composite's."""
        return self.ms[self.ours] / min(self.ms[name] for name in COMPOSITES if name in self.ms)

    @property
    def rate_vs_causal(self) -> float:
        """mirasol's GFLOP/s on chunk-causal's visible pairs over causal SDPA's on its own
        (token-causal) pairs: the fused kernel's rate, the issue's physical bar."""
        return self.gflops[self.ours] / self.gflops[CAUSAL]


def _causal_gflops(problem: ChunkedProblem, ms: float, backward: bool) -> float:
    # Token-causal's visible pairs: N (N + 1) / 2 per sample and head.
    from mirasol.benchmark.problems import _attention_flops

    n = problem.seqlen
    pairs = problem.batch * n * (n + 1) // 2
    return _attention_flops(pairs, problem.setting, backward) / (ms * 1e6)


def _points(problem: ChunkedProblem, table: Table, plan: Callable[[str], str]) -> list[Point]:
    points = []
    for mode in dict.fromkeys(row.mode for row in table.rows):
        rows = [row for row in table.rows if row.mode == mode]
        ms = {row.name: row.median_ms for row in rows}
        gflops = {row.name: row.tflops * 1e3 for row in rows}
        if CAUSAL in ms:
            gflops[CAUSAL] = _causal_gflops(problem, ms[CAUSAL], mode != "fwd")
        skipped = {s.name: s.reason for s in table.skipped if s.mode in (mode, "all")}
        built = [re.search(r"built in ([0-9.]+) ms", row.note) for row in table.rows
                 if row.name == "FlexAttention"]
        points.append(Point(problem.seqlen, problem.chunk_size, mode, ms, gflops,
                            plan(mode), skipped,
                            float(built[0].group(1)) if built and built[0] else None))
    return points


def _plan(problem: ChunkedProblem, mode: str) -> str:
    if problem.setting.backend != "torch":
        return ""
    from mirasol.masks import Rule
    from mirasol.ops import _pieces

    s, n = problem.setting, problem.seqlen
    parts = [_pieces.describe(_pieces.plan(n, n, Rule(problem.chunk_size),
                                           problem.batch * s.heads * s.head_dim, s.head_dim,
                                           s.dtype, backward, True, True))
             for backward in ((False,) if mode == "fwd" else (False, True))]
    return parts[0] if len(parts) == 1 or parts[0] == parts[1] else " / ".join(parts)


def sweep(setting: Setting, *, seqlens=SEQLENS, chunks=CHUNKS, reps: int = 5,
          progress: Callable[[str], None] | None = None) -> list[Point]:
    """Every (N, chunk) of the grid with chunk <= N, fwd and fwd+bwd."""
    points = []
    for n in seqlens:
        for chunk in chunks:
            if chunk > n:
                continue
            problem = ChunkedProblem(seqlen=n, chunk_size=chunk, setting=setting)
            table = run(problem, reps=reps, progress=progress)
            points += _points(problem, table, lambda mode: _plan(problem, mode))
    return points


def format_sweep(points: list[Point], setting: Setting) -> str:
    variants = list(dict.fromkeys(name for p in points for name in p.ms))
    head = ["N", "chunk", "mode", *variants, "FlexAttention mask ms", "x best composite",
            "rate / causal SDPA's", "torch backend's plan"]
    lines = [f"chunked causal attention sweep: H={setting.heads} d={setting.head_dim}, "
             f"{str(setting.dtype).removeprefix('torch.')} on {setting.device}; median ms; "
             "'x best composite': mirasol's time over the faster of SDPA with the dense mask "
             "and token-causal SDPA; 'rate': GFLOP/s on each one's own visible pairs; "
             "FlexAttention: compiled, forward only on CPU (no backward there), its "
             "BlockMask built apart ('mask ms')",
             " | ".join(head), " | ".join("---" for _ in head)]
    for p in points:
        cells = [str(p.seqlen), str(p.chunk), p.mode,
                 *(f"{p.ms[v]:.4g}" if v in p.ms else "-" for v in variants),
                 "-" if p.mask_ms is None else f"{p.mask_ms:.1f}",
                 f"{p.vs_best:.2f}", f"{p.rate_vs_causal:.2f}", p.plan]
        lines.append(" | ".join(cells))
    worst = max(points, key=lambda p: p.vs_best)
    large = [p for p in points if p.seqlen >= 1024]
    lines.append("")
    lines.append(f"worst ratio to the best composite: {worst.vs_best:.2f} (N={worst.seqlen}, "
                 f"chunk {worst.chunk}, {worst.mode})")
    if large:
        low = min(large, key=lambda p: p.rate_vs_causal)
        lines.append(f"lowest rate against causal SDPA's at N >= 1024: {low.rate_vs_causal:.2f} "
                     f"(N={low.seqlen}, chunk {low.chunk}, {low.mode})")
    return "\n".join(lines)


def plot(points: list[Point], setting: Setting, out: Path) -> list[Path]:
    """PNGs of time and GFLOP/s against N (log-log), a panel per chunk size, a line per
    variant, one figure per mode; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    chunks = sorted({p.chunk for p in points})
    dtype = str(setting.dtype).removeprefix("torch.")
    written = []
    for mode in dict.fromkeys(p.mode for p in points):
        fig, axes = plt.subplots(2, len(chunks), figsize=(max(7, 4 * len(chunks)), 7),
                                 squeeze=False)
        for col, chunk in enumerate(chunks):
            here = [p for p in points if p.mode == mode and p.chunk == chunk]
            variants = list(dict.fromkeys(name for p in here for name in p.ms))
            for name in variants:
                xs = [p.seqlen for p in here if name in p.ms]
                axes[0][col].plot(xs, [p.ms[name] for p in here if name in p.ms], "o-",
                                  label=name)
                axes[1][col].plot(xs, [p.gflops[name] for p in here if name in p.ms], "o-",
                                  label=name)
            axes[0][col].set_title(f"chunk {chunk}")
            for row, label in ((0, "ms (median)"), (1, "GFLOP/s, visible pairs")):
                axes[row][col].set_xscale("log", base=2)
                axes[row][col].set_yscale("log")
                axes[row][col].set_xlabel("N")
                axes[row][col].set_ylabel(label)
                axes[row][col].grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"chunked causal attention, {mode}: H={setting.heads} "
                     f"d={setting.head_dim} {dtype} on {setting.device}")
        fig.tight_layout()
        path = out / f"sweep-{setting.device}-{dtype}-{mode.replace('+', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
