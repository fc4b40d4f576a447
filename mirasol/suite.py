"""``mirasol bench --suite gpu``: parity, benchmarks and a report in one command.

On a CUDA machine, in one process:

1. **parity**: :func:`mirasol.testing.check.run_check` on the GPU, every op and backend in
   fp32, fp16, bf16 (and fp64) against the float64 oracle. A failure fails the suite, but
   everything else still runs and the report is still written.
2. **benchmarks** (:mod:`mirasol.benchmark`), fwd and fwd+bwd: chunked causal attention at
   N=4096 and 16384 with d=64 and 128, the text decoder's and the Combiner's cross-attention,
   and the TTM Combiner's token pooling, in bf16 (one chunked table in fp16 too); each side
   by side with SDPA and, where they can run, FlexAttention (compiled, same block mask),
   flash-attn and xformers. TFLOP/s also as a fraction of the card's dense 16-bit peak.
3. **report**: ``<out_dir>/<card-slug>.md`` and ``.json`` with the versions, what was
   skipped and why, and the wall time of every section.

Time budget (an estimate for a cold H100, to be replaced by the measured section times the
report records). Parity: about 75 Triton compiles (3 dtypes, the check's head dims, fwd and
bwd kernels of 4 ops) at 1-3 s each, 1.5-3 min. Benchmarks: the mirasol kernels at the
benchmark shapes, about 12 compiles, under 1 min; FlexAttention compiles a forward (about
10-20 s) and a forward+backward (about 20-40 s) per table, 7 tables, 3.5-7 min; the timed
runs themselves (22 calls per variant and mode, the slowest under 50 ms) under 1 min.
Cold total 6-10 min, so the plan carries a budget: a table not started within
``budget_s`` (default 420 s) is skipped and listed as such, which bounds the run at about
8 min. The tables run in order of value: the N=4096 chunked tables, the cross-attention and
token pooling tables, then N=16384, then fp16. ``--quick`` keeps the N=4096 bf16 tables,
10 reps: about 4-6 min cold. Triton's and inductor's caches make a second run faster.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from mirasol import __version__, benchmark
from mirasol._format import format_markdown
from mirasol.testing import check

# The model width the attention benchmarks keep fixed: heads = MODEL_DIM // head_dim.
MODEL_DIM = 1024


@dataclass(frozen=True)
class Plan:
    """What one suite run measures, in order. A problem not started within ``budget_s``
    seconds of the suite's start is listed as skipped instead of run."""
    device: str
    problems: tuple = ()       # benchmark problems (mirasol.benchmark), each with its Setting
    reps: int = 20             # timed runs per variant and mode (median)
    parity: bool = True        # run mirasol.testing.check.run_check first
    budget_s: float = 420.0


def gpu_plan(quick: bool = False, budget_s: float = 420.0) -> Plan:
    """The standard GPU plan (see the module docstring for its time budget)."""
    def setting(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> benchmark.Setting:
        return benchmark.Setting(heads=MODEL_DIM // head_dim, head_dim=head_dim, dtype=dtype,
                                 device="cuda")

    def chunked(seqlen: int, head_dim: int, dtype: torch.dtype = torch.bfloat16):
        return benchmark.ChunkedProblem(seqlen=seqlen, setting=setting(head_dim, dtype))

    standard = benchmark.problems(setting(64))
    # The TTM Combiner's read of 2 clips x 16 chunks: memory and chunk tokens, 576-704 each.
    pool = benchmark.TokenPoolProblem("TTM read", standard["cross-combiner"].q_lens * 2,
                                      setting=setting(64))
    problems = (chunked(4096, 64), chunked(4096, 128), standard["cross-text"],
                standard["cross-combiner"], pool)
    if not quick:
        problems += (chunked(16384, 64), chunked(16384, 128),
                     chunked(4096, 64, torch.float16))
    return Plan("cuda", problems, reps=10 if quick else 20, budget_s=budget_s)


@dataclass
class Section:
    name: str
    seconds: float
    error: str = ""   # why the section failed, if it did


@dataclass
class SuiteResult:
    device_name: str
    slug: str
    environment: dict[str, str]
    parity: list[check.CheckRow] = field(default_factory=list)
    tables: list[benchmark.Table] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)   # problems skipped by the budget
    sections: list[Section] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def parity_failures(self) -> list[check.CheckRow]:
        return [r for r in self.parity if not r.ok]

    @property
    def passed(self) -> bool:
        return not self.parity_failures and not any(s.error for s in self.sections)


def _environment(device: str) -> dict[str, str]:
    """Versions of what the numbers depend on; optional packages as "not installed"."""
    env = {"mirasol": __version__, "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    for dist in ("triton", "flash-attn", "xformers"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "not installed"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = (f"{props.name}, compute capability {props.major}.{props.minor}, "
                      f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB")
    return env


def run_suite(plan: Plan, progress: Callable[[str], None] | None = None) -> SuiteResult:
    """Run the plan: parity, then each problem (fwd and fwd+bwd) with the card's peak. A
    problem that raises is recorded as a failed section and the suite goes on (after a CUDA
    error that poisons the context, the later sections fail too, each with its reason)."""
    say = progress or (lambda message: None)
    start = time.perf_counter()
    name = benchmark.device_label(plan.device)
    result = SuiteResult(name, benchmark.card_slug(name), _environment(plan.device))

    def section(label: str, work: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        say(f"[{t0 - start:5.0f} s] {label}")
        error = ""
        try:
            work()
        except Exception as e:  # noqa: BLE001 -- recorded and reported; the suite fails
            error = f"{type(e).__name__}: {e}"
            say(f"FAILED: {error}")
        result.sections.append(Section(label, time.perf_counter() - t0, error))

    if plan.parity:
        section("parity", lambda: result.parity.extend(check.run_check(torch.device(plan.device))))
    for problem in plan.problems:
        label = f"{problem.title}, {str(problem.setting.dtype).removeprefix('torch.')}"
        if time.perf_counter() - start > plan.budget_s:
            result.not_run.append(label)
            continue
        peak = benchmark.card_peak(name, problem.setting.dtype)
        section(label, lambda p=problem, k=peak: result.tables.append(
            benchmark.run(p, reps=plan.reps, peak=k, progress=progress)))
    result.seconds = time.perf_counter() - start
    return result


def _parity_record(row: check.CheckRow) -> dict:
    return {**asdict(row), "dtype": str(row.dtype), "ok": row.ok}


def to_json(result: SuiteResult, plan: Plan, command: str) -> dict:
    return {"suite": "gpu", "command": command, "device": result.device_name,
            "environment": result.environment, "passed": result.passed,
            "seconds": round(result.seconds, 1),
            "plan": {"device": plan.device, "reps": plan.reps, "parity": plan.parity,
                     "budget_s": plan.budget_s},
            "sections": [{**asdict(s), "seconds": round(s.seconds, 1)} for s in result.sections],
            "parity": [_parity_record(r) for r in result.parity],
            "tables": [benchmark.table_record(t) for t in result.tables],
            "not_run": [{"problem": p, "reason": f"time budget of {plan.budget_s:g} s spent"}
                        for p in result.not_run]}


def to_markdown(result: SuiteResult, plan: Plan, command: str) -> str:
    failures = result.parity_failures
    skipped_parity = sum(1 for r in result.parity if r.skipped)
    lines = [f"# mirasol GPU suite: {result.device_name}", "",
             f"`{command}`: {'passed' if result.passed else 'FAILED'} in "
             f"{result.seconds:.0f} s (wall).", "",
             *(f"- {key}: {value}" for key, value in result.environment.items()),
             f"- timed runs per variant and mode: {plan.reps} (median); time budget for "
             f"starting a table: {plan.budget_s:g} s", "",
             format_markdown([("section", "seconds", "result"),
                              *((s.name, f"{s.seconds:.1f}", s.error or "ok")
                                for s in result.sections),
                              *((p, "-", "not run: time budget spent")
                                for p in result.not_run)])]
    if plan.parity:
        lines += ["", "## Parity", "",
                  f"Against the float64 oracle (err <= 2x reference err + floor; 3x for "
                  f"gradients): {len(result.parity) - len(failures) - skipped_parity} ok, "
                  f"{len(failures)} FAILED, {skipped_parity} skipped (reasons in the table).",
                  "", "```", check.format_check(result.parity), "```"]
    lines += ["", "## Benchmarks", "",
              "Medians measured side by side in this run. TFLOP/s count useful work only "
              "(visible query-key pairs, FlashAttention's FLOP count); 'of peak' divides by "
              "the card's dense 16-bit tensor-core peak from NVIDIA's datasheets (n/a where "
              "the card or dtype has no entry). Rivals that could not run are listed under "
              "their table with the reason."]
    for table in result.tables:
        lines += ["", f"### {table.title}", "", "```", benchmark.format_table(table), "```"]
    return "\n".join(lines) + "\n"


def write_report(result: SuiteResult, plan: Plan, out_dir: Path, command: str
                 ) -> tuple[Path, Path]:
    """Write ``<out_dir>/<slug>.md`` and ``.json``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{result.slug}.md", out_dir / f"{result.slug}.json"
    md.write_text(to_markdown(result, plan, command))
    js.write_text(json.dumps(to_json(result, plan, command), indent=2) + "\n")
    return md, js


def main(plan: Plan, out_dir: Path, command: str,
         progress: Callable[[str], None] | None = None) -> int:
    """Run the plan and write the report: 0 if everything passed, 1 otherwise."""
    result = run_suite(plan, progress)
    md, js = write_report(result, plan, out_dir, command)
    print(md.read_text())
    print(f"wrote {md} and {js}", file=sys.stderr)
    if not result.passed:
        print(f"GPU suite FAILED: {len(result.parity_failures)} parity check(s), "
              f"{sum(1 for s in result.sections if s.error)} section(s) with errors",
              file=sys.stderr)
        return 1
    return 0
