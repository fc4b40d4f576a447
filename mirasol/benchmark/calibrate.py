"""Measure the torch backend's CPU cost model (:class:`mirasol.ops._pieces.CallCost`) and
write it to ``mirasol/ops/_cpu_costs.py``: ``mirasol bench --calibrate-cpu``.

Times PyTorch's fused CPU attention (the calls the torch backend's pieces make, through
:func:`mirasol.ops._dense.attention_lse` and its backward) over a grid of query rows x keys,
unmasked, with a piece-sized mask, and token-causal, forward and backward, and fits each
kind by least squares on relative error (every shape counts alike, whatever its time). Medians of
``reps`` timed calls after one warm-up. Run it with the thread count the machine will use
(``OMP_NUM_THREADS``): the committed model is what the planner uses everywhere."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mirasol.ops._dense import attention_lse, attention_lse_backward
from mirasol.ops._pieces import CallCost

ROWS = (32, 96, 256, 512, 1024, 2048)
KEYS = (64, 512, 2048)
HEADS = 8
# The fused kernel's rate per pair grows with the head dim (about 2x from 16 to 128) and is
# 2-3x higher in bf16 on a CPU with AMX: one model per dtype the torch backend computes in
# and head dim; the planner reads the nearest head dim.
DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (16, 64, 128)
OUT = Path(__file__).resolve().parents[1] / "ops" / "_cpu_costs.py"
# The grids: pieces of rows x keys, and token-causal calls of n x n (fitted as n x n/2
# pairs: the work the fused kernel does below the diagonal).
GRIDS = {"unmasked": [(r, k) for r in ROWS for k in KEYS],
         "masked": [(r, k) for r in ROWS for k in KEYS],
         "causal": [(n, n) for n in (64, 128, 256, 512, 1024, 2048, 4096)]}


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _calls(rows: int, keys: int, kind: str, head_dim: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, HEADS, n, head_dim, generator=gen).to(dtype)
                   for n in (rows, keys, keys, rows))
    # A causal-like piece mask (every row sees a key): what a superblock's masked piece is.
    mask = (torch.arange(keys)[None, :] * rows <= (torch.arange(rows)[:, None] + 1) * keys
            if kind == "masked" else None)
    args = dict(mask=mask, causal=kind == "causal")
    scale = head_dim ** -0.5
    out, lse = attention_lse(q, k, v, scale, **args)
    out = out.to(dtype)  # as the backends save it
    return (lambda: attention_lse(q, k, v, scale, **args),
            lambda: attention_lse_backward(do, q, k, v, out, lse, scale, **args))


def _fit(samples: list[tuple[int, int, float]], work: int, by_block: bool) -> CallCost:
    """Least squares of ms = call + work (rows keys pair[bucket] + (rows + keys) row),
    relative error, coefficients clipped at 0; one pair cost for all query blocks unless
    ``by_block``."""
    rows_x, target = [], []
    for rows, keys, ms in samples:
        bucket = (0 if rows < 192 else 1 if rows < 768 else 2) if by_block else 0
        pair = [0.0, 0.0, 0.0][:3 if by_block else 1]
        pair[bucket] = work * rows * keys
        rows_x.append([x / ms for x in (1.0, *pair, work * (rows + keys))])
        target.append([1.0])
    coef = torch.linalg.lstsq(torch.tensor(rows_x, dtype=torch.float64),
                              torch.tensor(target, dtype=torch.float64)).solution
    c = [max(float(x), 0.0) for x in coef.flatten()]
    pair = tuple(c[1:4]) if by_block else (c[1],) * 3
    return CallCost(call=c[0], pair=pair, row=c[-1])


def _merge_ms_per_element(head_dim: int, reps: int) -> float:
    from mirasol.ops._pieces import merge

    rows = 2048
    o, o2 = (torch.randn(1, HEADS, rows, head_dim) for _ in range(2))
    lse, lse2 = (torch.randn(1, HEADS, rows) for _ in range(2))
    return _median_ms(lambda: merge(o, lse, o2, lse2), reps) / (HEADS * head_dim * rows)


# direction -> (dtype name, head dim) -> kind -> cost
Fits = dict[str, dict[tuple[str, int], dict[str, CallCost]]]


def measure(reps: int = 5) -> Fits:
    fits: Fits = {"forward": {}, "backward": {}}
    for dtype, head_dim in ((t, d) for t in DTYPES for d in HEAD_DIMS):
        key = (str(dtype).removeprefix("torch."), head_dim)
        merge = _merge_ms_per_element(head_dim, reps)
        for kind, grid in GRIDS.items():
            samples: dict[str, list] = {"forward": [], "backward": []}
            for rows, keys in grid:
                fwd, bwd = _calls(rows, keys, kind, head_dim, dtype)
                pairs_keys = keys // 2 if kind == "causal" else keys
                samples["forward"].append((rows, pairs_keys, _median_ms(fwd, reps)))
                samples["backward"].append((rows, pairs_keys, _median_ms(bwd, reps)))
            for direction, points in samples.items():
                cost = _fit(points, HEADS * head_dim, by_block=kind != "causal")
                fits[direction].setdefault(key, {})[kind] = CallCost(
                    cost.call, cost.pair, cost.row, merge)
    return fits


def _literal(cost: CallCost) -> str:
    pair = ", ".join(f"{x:.4g}" for x in cost.pair)
    return (f"CallCost(call={cost.call:.4g}, pair=({pair}),\n"
            f"{' ' * 12}row={cost.row:.4g}, merge={cost.merge:.4g})")


def write(fits: Fits, path: Path = OUT) -> str:
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    lines = [
        '"""The torch backend\'s CPU cost model (:class:`mirasol.ops._pieces.CallCost`) per '
        "dtype and",
        "head dim, measured by ``mirasol bench --calibrate-cpu`` "
        "(:mod:`mirasol.benchmark.calibrate`);",
        "do not edit by hand.",
        "",
        f"Measured on: {platform.machine()}, {_cpu_name()}, {threads} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        '"""',
        "",
        "from mirasol.ops._pieces import CallCost",
        "",
    ]
    for direction, name in (("forward", "FORWARD"), ("backward", "BACKWARD")):
        lines.append(f"{name} = {{")
        for key, kinds in fits[direction].items():
            lines.append(f"    {key!r}: {{")
            for kind, cost in kinds.items():
                lines.append(f'        "{kind}": {_literal(cost)},')
            lines.append("    },")
        lines.append("}")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def report(fits: Fits) -> str:
    """Each fitted model's fixed cost and rates: a check that the fit is sane."""
    rows = []
    for direction, dims in fits.items():
        for (dtype, head_dim), kinds in dims.items():
            for kind, cost in kinds.items():
                # 4 FLOPs per (pair, head dim) forward (QK^T and PV), as the tables count.
                rate = [4 / (p * 1e6) if p else math.inf for p in cost.pair]
                rows.append(f"{direction:8} {dtype:8} d={head_dim:<3} {kind:8} call "
                            f"{cost.call * 1e3:7.1f} us, GFLOP/s (forward count) by query "
                            "block " + ", ".join(f"{r:.0f}" for r in rate))
    return "\n".join(rows)
