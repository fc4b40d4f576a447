"""The tables as text (aligned columns) and as JSON-ready records."""

from __future__ import annotations

from dataclasses import asdict

from mirasol._format import format_rows
from mirasol.benchmark.model_scaling import ScalingTable
from mirasol.benchmark.timing import Table


def _opt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _dtype(table: Table) -> str:
    return str(table.setting.dtype).removeprefix("torch.")


def format_table(table: Table, *, gflops: bool = False) -> str:
    """The table as aligned text; ``gflops``: the work rate in GFLOP/s (CPU-sized numbers)
    rather than TFLOP/s."""
    unit = "GFLOP/s" if gflops else "TFLOP/s"
    head = (f"{table.title}, {_dtype(table)} on {table.device_name}\nratios against "
            f"{table.baseline!r}, measured side by side in this run (medians over samples of "
            f"back-to-back calls, timer: {table.timer or 'n/a'}; 'host ms' is the host's time "
            f"to issue one call); {unit} count useful work only")
    if table.visible_fraction is not None:
        head += f" (the visible pairs: {table.visible_fraction:.1%} of the grid)"
    if table.peak is not None:
        head += "; of peak: " + (f"TFLOP/s / {table.peak.note}" if table.peak.tflops
                                 else f"n/a, {table.peak.note}")
    with_peak = table.peak is not None
    cells = [("mode", "variant", "median ms", "host ms", "x time", "peak MiB", "x memory",
              unit, *(("of peak",) if with_peak else ()), "note")]
    for m in table.rows:
        note = "; ".join(n for n in (m.note, m.host_bound and "host-bound: launch overhead",
                                     m.failed and f"FAIL: {m.failed}") if n)
        cells.append((m.mode, m.name, f"{m.median_ms:.4f}", _opt(m.host_ms, ".4f"),
                      _opt(m.ratio, ".2f"), _opt(m.peak_mib, ".1f"), _opt(m.mem_ratio, ".2f"),
                      f"{m.tflops * 1e3:.1f}" if gflops else f"{m.tflops:.3f}",
                      *((_opt(m.peak_fraction, ".1%"),) if with_peak else ()),
                      note))
    lines = [head, format_rows(cells)]
    lines += [f"FAILED: {f.name} ({f.mode}): {f.reason}" for f in table.failed]
    lines += [f"skipped: {s.name} ({s.mode}): {s.reason}" for s in table.skipped]
    lines += [f"SM clock ({c['mode']}): {c['before_mhz']} -> {c['after_mhz']} MHz "
              f"({c['source']})" for c in table.clocks if c["before_mhz"] is not None]
    return "\n".join(lines)


def format_targets(tables: list[Table]) -> str:
    """The tables' targets in one table: each ratio (median time of one variant over
    another's, measured side by side in one process) against its goal, "met" or "MISSED"
    (reported, never asserted); goal "-": none stated, the ratio is reported alone."""
    cells = [("table", "dtype", "mode", "ratio of", "ms", "ms (other)", "x time", "goal",
              "verdict")]
    for t in tables:
        for r in t.targets:
            goal = "-" if r["at_most"] is None else f"<= {r['at_most']:.2f}x"
            verdict = ("" if r["at_most"] is None else "n/a" if r["met"] is None
                       else "met" if r["met"] else "MISSED")
            if r["missing"]:
                verdict = f"{verdict} (not measured: {r['missing']})".strip()
            cells.append((t.title.split(":")[0], _dtype(t), r["mode"],
                          f"{r['variant']} / {r['against']}", _opt(r["variant_ms"], ".1f"),
                          _opt(r["against_ms"], ".1f"), _opt(r["ratio"], ".2f"), goal,
                          verdict))
    return format_rows(cells)


def table_record(table: Table) -> dict:
    """The table as JSON-ready data (dtypes as strings)."""
    record = asdict(table)
    record["setting"]["dtype"] = str(table.setting.dtype)
    return record


def format_scaling(table: ScalingTable) -> str:
    few, many = table.frames
    params = ", ".join(f"{name} {n / 1e6:.1f}M parameters" for name, n in table.params.items())
    head = (f"{table.title}\n{params}; x = cost at {many} frames / the same model and mode at "
            f"{few} frames, measured side by side in this run (medians); target for mirasol: "
            f"<= {table.target:g}x time and memory")
    cells = [("mode", "model", "frames", "chunks", "median ms", "x time", "peak MiB",
              "x memory", "target")]
    for r in table.rows:
        cells.append((r.mode, r.model, str(r.frames), str(r.chunks), f"{r.median_ms:.1f}",
                      f"{r.ratio:.2f}", "n/a" if r.peak_mib is None else f"{r.peak_mib:.1f}",
                      "n/a" if r.mem_ratio is None else f"{r.mem_ratio:.2f}",
                      {None: "", True: "met", False: "MISSED"}[r.meets_target]))
    return head + "\n" + format_rows(cells)
