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
from dataclasses import replace
from pathlib import Path

import torch

from mirasol.benchmark.timing import cpu_name
from mirasol.ops._dense import attention_lse, attention_lse_backward
from mirasol.ops._pieces import CallCost, query_blocks

ROWS = (32, 96, 256, 512, 1024, 2048)
KEYS = (64, 512, 2048, 4096)
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
    args = dict(mask=mask, causal=kind == "causal", may_hold_nan=False)
    scale = head_dim ** -0.5
    out, lse = attention_lse(q, k, v, scale, **args)
    out = out.to(dtype)  # as the backends save it
    # Timed as the backends make the call: the piece's rows of a larger problem in, its
    # results written into the problem's buffers (so the fixed cost includes the slicing
    # and writing around a call, which small pieces pay in full).
    buffers = [torch.zeros(1, HEADS, n + 1, *t.shape[3:])
               for t, n in ((out, rows), (lse, rows), (do, rows), (k, keys), (v, keys))]
    rows_of = (slice(None), slice(None), slice(1, None))

    def fwd():
        buffers[0][rows_of], buffers[1][rows_of] = attention_lse(q, k, v, scale, **args)

    def bwd():
        gq, gk, gv = attention_lse_backward(do, q, k, v, out, lse, scale, **args)
        buffers[2][rows_of] += gq
        buffers[3][rows_of] += gk
        buffers[4][rows_of] += gv

    return fwd, bwd


def _fit(samples: list[tuple[int, int, float]], work: int) -> CallCost:
    """Least squares of :meth:`CallCost.ms` (call, pair, stream, row) on relative error,
    coefficients clipped at 0 (``call`` is replaced by the measured piece cost)."""
    rows_x, target = [], []
    for rows, keys, ms in samples:
        features = (1.0, work * rows * keys, work * query_blocks(rows) * keys,
                    work * (rows + keys))
        rows_x.append([x / ms for x in features])
        target.append([1.0])
    coef = torch.linalg.lstsq(torch.tensor(rows_x, dtype=torch.float64),
                              torch.tensor(target, dtype=torch.float64)).solution
    call, pair, stream, row = (max(float(x), 0.0) for x in coef.flatten())
    return CallCost(call=call, pair=pair, stream=stream, row=row)


def _merge_ms_per_element(head_dim: int, reps: int) -> float:
    from mirasol.ops._pieces import merge

    rows = 2048
    o, o2 = (torch.randn(1, HEADS, rows, head_dim) for _ in range(2))
    lse, lse2 = (torch.randn(1, HEADS, rows) for _ in range(2))
    return _median_ms(lambda: merge(o, lse, o2, lse2), reps) / (HEADS * head_dim * rows)


def _piece_ms(head_dim: int, dtype: torch.dtype, reps: int) -> dict[str, float]:
    """What one more piece costs a torch backend whatever its size: the call into the
    fused kernel and the loop around it (views, writing results, Python), measured as the
    cross-attention torch backend's time per extra one-query one-key segment, forward and
    backward. It stands for the fitted fixed cost of a call, which the kernel-only fit
    puts at a fraction of it. (Segment i has i + 1 keys, so that no two share a call.)"""
    from mirasol.ops.cross_attention import _torch_bwd, _torch_fwd

    def times(segments: int) -> tuple[float, float]:
        keys = segments * (segments + 1) // 2
        q, do = (torch.randn(1, HEADS, segments, head_dim).to(dtype) for _ in range(2))
        k, v = (torch.randn(1, HEADS, keys, head_dim).to(dtype) for _ in range(2))
        cu_q = torch.arange(segments + 1, dtype=torch.int32)
        cu_k = torch.cumsum(cu_q, 0, dtype=torch.int32)
        out, lse = _torch_fwd(q, k, v, cu_q, cu_k, None, False, 1.0)
        return (_median_ms(lambda: _torch_fwd(q, k, v, cu_q, cu_k, None, False, 1.0), reps),
                _median_ms(lambda: _torch_bwd(do, q, k, v, out, lse, cu_q, cu_k, None,
                                              False, 1.0), reps))

    one, many = times(1), times(33)
    return {"forward": (many[0] - one[0]) / 32, "backward": (many[1] - one[1]) / 32}


# direction -> (dtype name, head dim) -> kind -> cost
Fits = dict[str, dict[tuple[str, int], dict[str, CallCost]]]


def measure(reps: int = 5) -> Fits:
    fits: Fits = {"forward": {}, "backward": {}}
    for dtype, head_dim in ((t, d) for t in DTYPES for d in HEAD_DIMS):
        key = (str(dtype).removeprefix("torch."), head_dim)
        merge = _merge_ms_per_element(head_dim, reps)
        piece = _piece_ms(head_dim, dtype, reps)
        for kind, grid in GRIDS.items():
            samples: dict[str, list] = {"forward": [], "backward": []}
            for rows, keys in grid:
                fwd, bwd = _calls(rows, keys, kind, head_dim, dtype)
                pairs_keys = keys // 2 if kind == "causal" else keys
                samples["forward"].append((rows, pairs_keys, _median_ms(fwd, reps)))
                samples["backward"].append((rows, pairs_keys, _median_ms(bwd, reps)))
            for direction, points in samples.items():
                cost = _fit(points, HEADS * head_dim)
                fits[direction].setdefault(key, {})[kind] = replace(
                    cost, call=piece[direction], merge=merge)
    return fits


def _literal(cost: CallCost) -> str:
    return (f"CallCost(call={cost.call:.4g}, pair={cost.pair:.4g}, stream={cost.stream:.4g},"
            f"\n{' ' * 12}row={cost.row:.4g}, merge={cost.merge:.4g})")


def write(fits: Fits, path: Path = OUT) -> str:
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    lines = [
        '"""The torch backend\'s CPU cost model (:class:`mirasol.ops._pieces.CallCost`) per '
        "dtype and",
        "head dim, measured by ``mirasol bench --calibrate-cpu`` "
        "(:mod:`mirasol.benchmark.calibrate`);",
        "do not edit by hand.",
        "",
        f"Measured on: {platform.machine()}, {cpu_name()}, {threads} threads, "
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


def report(fits: Fits) -> str:
    """Each fitted model's fixed cost and rate: a check that the fit is sane."""
    rows = []
    for direction, dims in fits.items():
        for (dtype, head_dim), kinds in dims.items():
            for kind, cost in kinds.items():
                # 4 FLOPs per (pair, head dim) forward (QK^T and PV), as the tables count.
                rate = 4 / (cost.pair * 1e6) if cost.pair else math.inf
                rows.append(f"{direction:8} {dtype:8} d={head_dim:<3} {kind:8} call "
                            f"{cost.call * 1e3:6.1f} us, {rate:5.0f} GFLOP/s (forward count) "
                            f"on pairs, key streaming {cost.stream * 1e9:.3g} ps/element")
    return "\n".join(rows)
