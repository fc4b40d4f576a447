"""``mirasol bench --suite gpu``: parity, benchmarks and a report in one command, by a hard
deadline (``bench/gpu_suite.sh`` is the device command around it).

One process runs a :class:`Plan`: steps in order of value, each a section of the report.

1. **parity** (:class:`ParityStep`): :mod:`mirasol.testing.check`'s rows of one op in one
   dtype, triton and torch backends against the float64 oracle. A row that raises is a row
   of its own (with the reason); the others still run. On CUDA a triton row skipped in a
   dtype the kernels declare fails (``CheckRow.ok``).
2. **benchmarks** (:class:`TableStep`, :mod:`mirasol.benchmark`), fwd and fwd+bwd, side by
   side with SDPA (default dispatch and each of its backends), FlexAttention (compiled once
   per mode, its block mask built and timed apart) and flash-attn / xformers when importable.
   A variant of ours that raises is a failed row; the table goes on.
3. **report**: ``<out_dir>/<slug>.md`` and ``.json``, rewritten atomically after every
   row and section (each row also printed, with its numbers, as soon as it is measured),
   so that a run cut short leaves what it measured.

The deadline counts everything from ``started_at`` (the device command's start: install,
interpreter start-up, imports, parity, compiles, tables). A step whose estimated cost does
not fit in the time left is listed as not run; a step that overruns is cut by an alarm a
few seconds before the deadline (its rows so far are kept), and SIGTERM does the same: the
partial report is written and the process exits 124. The estimates of :func:`gpu_plan` are
guesses for a cold H200 (no kernel has been timed on a GPU yet); each report records the
measured time of every section beside its estimate, to replace them.

``--rehearsal`` runs the same path on the CPU (:func:`rehearsal_plan`: tiny problems, the
triton backend through the interpreter, the ``perf_counter`` stand-in timer): its report
says so in its title and its JSON (``"rehearsal": true``); its numbers are CPU numbers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from mirasol import __version__, benchmark
from mirasol._format import format_markdown, format_rows
from mirasol.benchmark.lineup import reason
from mirasol.benchmark.timing import TimingPolicy, sm_clock_mhz
from mirasol.testing import check

# The model width the attention benchmarks keep fixed: heads = MODEL_DIM // head_dim.
MODEL_DIM = 1024
DEFAULT_DEADLINE_S, QUICK_DEADLINE_S = 300.0, 150.0
# Exit status of a run cut by its deadline or SIGTERM (as timeout(1) reports a timeout).
INTERRUPTED = 124
DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
OPTIONAL_RIVALS = ("flash_attn", "xformers")


@dataclass(frozen=True)
class ParityStep:
    """Parity of one op, in the given dtypes and backends."""
    op: str
    dtypes: tuple[torch.dtype, ...]
    estimate_s: float
    backends: tuple[str, ...] = ("triton", "torch")

    @property
    def label(self) -> str:
        names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
        return f"parity {names}: {self.op} ({', '.join(self.backends)})"


@dataclass(frozen=True)
class TableStep:
    """One benchmark table (a problem of :mod:`mirasol.benchmark`)."""
    problem: object
    estimate_s: float

    @property
    def label(self) -> str:
        return f"{self.problem.title}, {str(self.problem.setting.dtype).removeprefix('torch.')}"


# bench/gpu_suite.sh's backstop: SIGTERM this long before the deadline (SIGKILL at it). The
# alarm must come first (a plan's reserve_s larger), or the two race and the run is cut by
# whichever Python handles first.
BACKSTOP_S = 2.0


@dataclass(frozen=True)
class Plan:
    """What one suite run does, in order, and by when. ``started_at`` (``time.time()``) is
    when the device command started; the deadline is ``deadline_s`` after it. The alarm
    fires ``reserve_s`` before the deadline, which leaves the time to write the report."""
    device: str
    steps: tuple = ()
    deadline_s: float = DEFAULT_DEADLINE_S
    started_at: float = field(default_factory=time.time)
    reserve_s: float = 5.0
    policy: TimingPolicy = TimingPolicy()
    use_estimates: bool = True  # False: every step starts; only the deadline cuts
    rehearsal: bool = False

    @property
    def deadline_at(self) -> float:
        return self.started_at + self.deadline_s


def _parity_steps(per_dtype: dict[str, float], dtypes) -> tuple[ParityStep, ...]:
    return tuple(ParityStep(op, tuple(dtypes), estimate * len(dtypes))
                 for op, estimate in per_dtype.items())


def gpu_plan(quick: bool = False, deadline_s: float | None = None,
             started_at: float | None = None) -> Plan:
    """The GPU plan, in order of value: bf16 parity of every op (does each kernel work on
    the card?), the headline chunked table, the text decoder's cross-attention, the
    block-causal family's headline (Wan's window with sinks, and both context-parallel modes
    at world size 1 on it) and Mirasol's decode step
    (split-KV against one split), parity in the other dtypes, then the other tables (the
    rest of the family at Wan's shapes among them). Estimates (seconds, cold, never measured: see
    the module docstring) count Triton's compiles (about 1-2 s each) and FlexAttention's
    (a forward 10-20 s, a forward+backward 20-40 s)."""
    def setting(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> benchmark.Setting:
        return benchmark.Setting(heads=MODEL_DIM // head_dim, head_dim=head_dim, dtype=dtype,
                                 device="cuda")

    def chunked(seqlen: int, head_dim: int, dtype=torch.bfloat16, estimate: float = 60.0):
        return TableStep(benchmark.ChunkedProblem(seqlen=seqlen, setting=setting(head_dim,
                                                                                 dtype)),
                         estimate)

    def family(name: str, seqlen: int, chunk: int, estimate: float, heads: int = 12,
               **options):
        # Wan-1.3B's attention (12 heads x 128, bf16) unless said otherwise (DESIGN.md §2a).
        s = benchmark.Setting(heads=heads, head_dim=128, dtype=torch.bfloat16, device="cuda")
        return TableStep(benchmark.ChunkedProblem(seqlen=seqlen, chunk_size=chunk, setting=s,
                                                  name=name, **options), estimate)

    # The block-causal family at its users' shapes: a Wan chunk is 3 frames of 1,560 tokens,
    # 21 frames a clip; Mirasol's A/V model decodes 32-token chunks against 4,096 latents.
    wan_window = family("Wan, window 3 + 1 sink frame", 32760, 4680, 90.0, window_chunks=3,
                        sink_tokens=1560, context_parallel=True)
    decode = family("Mirasol decode, split-KV vs one split", 32, 32, 30.0, heads=16,
                    cached=4064, modes=("fwd",), unsplit_too=True)
    wan_rest = (family("Wan chunk vs its cache", 4680, 4680, 50.0, cached=28080),
                family("Wan, chunk-causal", 32760, 4680, 80.0),
                family("Wan, teacher forcing", 2 * 32760, 4680, 100.0, window_chunks=3,
                       sink_tokens=1560, teacher_forcing=True))
    standard = benchmark.problems(setting(64))
    # The TTM Combiner's read of 2 clips x 16 chunks: memory and chunk tokens, 576-704 each.
    pool = benchmark.TokenPoolProblem("TTM read", standard["cross-combiner"].q_lens * 2,
                                      setting=setting(64))
    per_dtype = {"chunked_causal_attention": 25.0, "cross_attention": 15.0,
                 "cross_attention_padded": 15.0, "token_pool": 6.0}
    steps = (*_parity_steps(per_dtype, DTYPES[:1]), chunked(4096, 64),
             TableStep(standard["cross-text"], 45.0))
    if not quick:
        steps += (wan_window, decode, *_parity_steps(per_dtype, DTYPES[1:3]),
                  *_parity_steps(dict.fromkeys(per_dtype, 3.0), DTYPES[3:]),
                  TableStep(standard["cross-combiner"], 45.0), TableStep(pool, 15.0),
                  *wan_rest, chunked(4096, 128), chunked(16384, 64, estimate=70.0),
                  chunked(16384, 128, estimate=70.0), chunked(4096, 64, torch.float16))
    default = QUICK_DEADLINE_S if quick else DEFAULT_DEADLINE_S
    return Plan("cuda", steps, deadline_s=deadline_s or default,
                started_at=started_at or time.time(), policy=TimingPolicy(warmup_s=0.25))


def rehearsal_plan(deadline_s: float = 60.0, started_at: float | None = None) -> Plan:
    """The GPU plan's path on the CPU stand-in: fp32 parity of every op's torch backend and
    of token pooling's triton backend (through the interpreter), tiny tables of every kind,
    then the interpreter's parity of the attention kernels, which is slow: with the default
    deadline the last of it is listed as not run by its estimate. Estimates are CPU timings
    of this plan (2 shared cores, one torch thread)."""
    s = benchmark.Setting(heads=2, head_dim=16)
    attention = ("chunked_causal_attention", "cross_attention", "cross_attention_padded")
    fp32 = (torch.float32,)
    steps = (ParityStep("token_pool", fp32, 4.0),
             *(ParityStep(op, fp32, 1.0, backends=("torch",)) for op in attention),
             TableStep(benchmark.ChunkedProblem(seqlen=48, chunk_size=16, setting=s,
                                                context_parallel=True), 5.0),
             TableStep(benchmark.CrossProblem("tiny", (5, 0, 9), (12, 7, 3), s), 4.0),
             TableStep(benchmark.TokenPoolProblem("tiny", (10, 0, 7), tokens=4, dim=16,
                                                  setting=s), 1.0),
             *(ParityStep(op, fp32, estimate, backends=("triton",))
               for op, estimate in zip(attention, (23.0, 9.0, 16.0))))
    return Plan("cpu", steps, deadline_s=deadline_s, started_at=started_at or time.time(),
                reserve_s=BACKSTOP_S + 1.0,
                policy=TimingPolicy(warmup_s=0.02, sample_s=0.005, samples=3),
                rehearsal=True)


@dataclass
class ParityResult:
    """One parity row: the check's row, or the error that stopped it."""
    op: str
    backend: str
    dtype: torch.dtype
    row: check.CheckRow | None = None
    error: str = ""        # first line
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.row is not None and self.row.ok


@dataclass
class Section:
    name: str
    estimate_s: float
    seconds: float
    status: str = "ok"     # ok | FAILED | cut: <why> | not run: <why>
    error: str = ""
    traceback: str = ""


@dataclass
class SuiteResult:
    device_name: str
    slug: str
    environment: dict[str, str]
    parity: list[ParityResult] = field(default_factory=list)
    tables: list[benchmark.Table] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: str = ""   # "deadline" or "SIGTERM" when the run was cut short
    finished: bool = False

    @property
    def failures(self) -> list[str]:
        """Everything that fails the run, one line each."""
        out = [f"parity {p.op} {p.backend} {p.dtype}: {p.error or 'FAIL'}"
               for p in self.parity if not p.ok]
        out += [f"{s.name}: {s.error}" for s in self.sections if s.status == "FAILED"]
        for t in self.tables:
            out += [f"{t.title}: {f.name} ({f.mode}): {f.reason}" for f in t.failed]
            out += [f"{t.title}: {m.name} ({m.mode}): {m.failed}" for m in t.rows if m.failed]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures and not self.interrupted


class Interrupted(BaseException):
    """The deadline's alarm or SIGTERM: a BaseException, so that no ``except Exception``
    on the way (a rival's, a section's) holds it up."""


def _environment(device: str) -> dict[str, str]:
    """Versions of what the numbers depend on; optional packages as "not installed"."""
    env = {"mirasol": __version__, "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    for dist in ("triton", "flash-attn", "xformers"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "not installed"
    absent = [name for name in OPTIONAL_RIVALS if importlib.util.find_spec(name) is None]
    env["rivals absent"] = ", ".join(absent) or "none"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = (f"{props.name}, compute capability {props.major}.{props.minor}, "
                      f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB")
        env["cudnn"] = str(torch.backends.cudnn.version())
        mhz, source = sm_clock_mhz(device)
        env["SM clock at start"] = f"{mhz} MHz ({source})"
    return env


def _parity(step: ParityStep, device: str, result: SuiteResult, say) -> None:
    for dtype in step.dtypes:
        for backend in step.backends:
            entry = ParityResult(step.op, backend, dtype)
            try:
                entry.row = check.check_row(step.op, backend, dtype, torch.device(device))
            except Exception as e:  # noqa: BLE001 -- a failed row; the others still run
                entry.error, entry.traceback = reason(e), traceback.format_exc()
                print(entry.traceback, file=sys.stderr, flush=True)
            result.parity.append(entry)  # not when cut: the section says it was
            say(f"parity {step.op} {backend} {str(dtype).removeprefix('torch.')}: "
                + _parity_result(entry))


def _parity_result(p: ParityResult) -> str:
    if p.row is None:
        return f"FAILED: {p.error}"
    ratio = "" if p.row.worst_ratio is None else f", worst err/allowed {p.row.worst_ratio:.3f}"
    state = "ok" if p.row.ok else "FAIL"
    return (f"{state}{' (skipped: ' + p.row.skipped + ')' if p.row.skipped else ''}"
            f"{ratio}, {p.row.cases} case(s)")


def _table(step: TableStep, plan: Plan, result: SuiteResult, say) -> None:
    problem = step.problem
    peak = (benchmark.card_peak(result.device_name, problem.setting.dtype)
            if plan.device.startswith("cuda") else None)
    benchmark.run(problem, peak=peak, progress=say, policy=plan.policy,
                  started=result.tables.append)


def run_suite(plan: Plan, result: SuiteResult, save: Callable[[], None],
              say: Callable[[str], None]) -> None:
    """Run the plan's steps into ``result``, calling ``save`` after each row and section.
    Returns when the plan is done; raises :class:`Interrupted` when cut (the cut section
    recorded)."""
    def row(message: str) -> None:
        # Saved after every row too: a kill that no handler sees (SIGKILL, a kernel hung
        # inside a CUDA call) loses at most the row being measured.
        say(message)
        save()

    start = time.time()
    result.sections.append(Section("start-up (install, interpreter, imports)", 0.0,
                                   start - plan.started_at))
    save()
    for step in plan.steps:
        left = plan.deadline_at - plan.reserve_s - time.time()
        if plan.use_estimates and step.estimate_s > left:
            result.sections.append(Section(step.label, step.estimate_s, 0.0,
                                           f"not run: estimated {step.estimate_s:g} s, "
                                           f"{max(left, 0):.0f} s left"))
            say(f"not run: {step.label} (estimated {step.estimate_s:g} s, {left:.0f} s left)")
            continue
        t0 = time.time()
        say(f"[{t0 - plan.started_at:6.1f} s] {step.label}")
        section = Section(step.label, step.estimate_s, 0.0)
        result.sections.append(section)
        try:
            if isinstance(step, ParityStep):
                _parity(step, plan.device, result, row)
            else:
                _table(step, plan, result, row)
        except Interrupted as cut:
            section.status = f"cut: {cut}"
            raise
        except Exception as e:  # noqa: BLE001 -- recorded; the next section still runs
            section.status, section.error = "FAILED", reason(e)
            section.traceback = traceback.format_exc()
            print(section.traceback, file=sys.stderr, flush=True)
            say(f"FAILED: {section.error}")
        finally:
            section.seconds = time.time() - t0
            result.seconds = time.time() - plan.started_at
            save()
    result.finished = True


def _not_run_after_cut(plan: Plan, result: SuiteResult, why: str) -> None:
    done = {s.name for s in result.sections}
    result.sections += [Section(step.label, step.estimate_s, 0.0, f"not run: {why}")
                        for step in plan.steps if step.label not in done]


def _dtype(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def to_json(result: SuiteResult, plan: Plan, command: str) -> dict:
    return {"suite": "gpu", "rehearsal": plan.rehearsal, "command": command,
            "device": result.device_name, "environment": result.environment,
            "passed": result.passed, "finished": result.finished,
            "interrupted": result.interrupted, "failures": result.failures,
            "seconds": round(result.seconds, 2),
            "plan": {"device": plan.device, "deadline_s": plan.deadline_s,
                     "started_at": plan.started_at, "reserve_s": plan.reserve_s,
                     "use_estimates": plan.use_estimates, "policy": asdict(plan.policy)},
            "sections": [{**asdict(s), "seconds": round(s.seconds, 2)} for s in result.sections],
            "parity": [{"op": p.op, "backend": p.backend, "dtype": str(p.dtype), "ok": p.ok,
                        "error": p.error, "traceback": p.traceback,
                        "row": None if p.row is None else {**asdict(p.row),
                                                           "dtype": str(p.row.dtype)}}
                       for p in result.parity],
            "tables": [benchmark.table_record(t) for t in result.tables]}


def to_markdown(result: SuiteResult, plan: Plan, command: str) -> str:
    state = ("passed" if result.passed else
             f"cut by {result.interrupted}" if result.interrupted and not result.failures
             else "FAILED")
    lines = [f"# mirasol GPU suite: {result.device_name}", ""]
    if plan.rehearsal:
        lines += ["**CPU REHEARSAL on a stand-in device, not GPU results**: the CPU, the "
                  "torch backend and the Triton interpreter, timed with `perf_counter`. It "
                  "checks the suite's path (deadline, saving, failures as rows); no kernel "
                  "ran on a GPU.", ""]
    lines += [f"`{command}`: {state} after {result.seconds:.1f} s of a {plan.deadline_s:g} s "
              f"deadline (counted from the command's start)"
              + ("" if result.finished else "; report written before the end") + ".", "",
              *(f"- {key}: {value}" for key, value in result.environment.items()),
              f"- timing: warm-up {plan.policy.warmup_s:g} s, {plan.policy.samples} samples "
              f"of >= {plan.policy.sample_s * 1e3:g} ms of back-to-back calls (median)", ""]
    if result.failures:
        lines += ["Failures:", "", *(f"- {f}" for f in result.failures), ""]
    lines += [format_markdown([("section", "estimate s", "seconds", "result"),
                               *((s.name, f"{s.estimate_s:g}", f"{s.seconds:.1f}",
                                  s.status + (f": {s.error}" if s.error else ""))
                                 for s in result.sections)])]
    if result.parity:
        ok = sum(p.ok for p in result.parity)
        cells = [("op", "backend", "dtype", "result")]
        cells += [(p.op, p.backend, _dtype(p.dtype), _parity_result(p)) for p in result.parity]
        lines += ["", "## Parity", "",
                  f"Against the float64 oracle (err <= 2x reference err + floor; 3x for "
                  f"gradients): {ok} of {len(result.parity)} rows ok.", "", "```",
                  format_rows(cells), "```"]
    lines += ["", "## Benchmarks", "",
              "Measured side by side in this run. TFLOP/s count useful work only (visible "
              "query-key pairs, FlashAttention's FLOP count); 'of peak' divides by the "
              "card's dense 16-bit tensor-core peak (n/a where the card or dtype has no "
              "entry). Rivals that could not run are listed under their table with the "
              "reason; a table cut short has the rows measured before the cut."]
    for table in result.tables:
        lines += ["", f"### {table.title}", "", "```", benchmark.format_table(table), "```"]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(result: SuiteResult, plan: Plan, out_dir: Path, command: str
                 ) -> tuple[Path, Path]:
    """Write ``<out_dir>/<slug>.md`` and ``.json`` atomically; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{result.slug}.md", out_dir / f"{result.slug}.json"
    _write_atomic(js, json.dumps(to_json(result, plan, command), indent=2) + "\n")
    _write_atomic(md, to_markdown(result, plan, command))
    return md, js


def main(plan: Plan, out_dir: Path, command: str) -> int:
    """Run the plan, saving the report after every section and printing every row with its
    numbers as it is measured (stdout and ``<out_dir>/suite.log``): 0 if everything passed,
    1 on a failure, :data:`INTERRUPTED` when the deadline or SIGTERM cut the run (after
    writing the partial report)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (out_dir / "suite.log").open("a")

    def progress(message: str) -> None:
        print(message, flush=True)
        log.write(message + "\n")
        log.flush()

    name = benchmark.device_label(plan.device)
    slug = benchmark.card_slug(name)
    result = SuiteResult(name, "rehearsal-" + slug if plan.rehearsal else slug,
                         _environment(plan.device))

    def save() -> None:
        write_report(result, plan, out_dir, command)

    def interrupt(why: str) -> None:
        # A SIGTERM once the alarm is due is the deadline's backstop (gpu_suite.sh's
        # timeout(1)), delivered first when a long call held the alarm's handler back.
        if why == "SIGTERM" and time.time() >= plan.deadline_at - plan.reserve_s:
            why = "deadline"
        # Again in a second, should a library's broad except swallow this one.
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise Interrupted(why)

    previous = {sig: signal.signal(sig, lambda *_, w=why: interrupt(w))
                for sig, why in ((signal.SIGTERM, "SIGTERM"), (signal.SIGALRM, "deadline"))}
    signal.setitimer(signal.ITIMER_REAL,
                     max(plan.deadline_at - plan.reserve_s - time.time(), 0.01))
    try:
        run_suite(plan, result, save, progress)
    except Interrupted as cut:
        # The report is being written: no further signal may cut that.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        result.interrupted = str(cut)
        result.seconds = time.time() - plan.started_at
        _not_run_after_cut(plan, result, f"cut by {cut}")
        save()
        print(f"GPU suite cut by {cut} after {result.seconds:.1f} s; partial report in "
              f"{out_dir}", file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.close()
    save()
    md = out_dir / f"{result.slug}.md"
    print(md.read_text(), flush=True)
    print(f"wrote {md} and {md.with_suffix('.json')}", file=sys.stderr)
    if result.failures:
        print(f"GPU suite FAILED: {len(result.failures)} failure(s)", file=sys.stderr)
        return 1
    return 0


def command(args) -> int:
    """``mirasol bench --suite gpu`` from its parsed arguments (see mirasol.cli, which
    switches on Triton's interpreter for ``--rehearsal`` before this module is imported)."""
    started_at = args.started_at or time.time()
    flags = [f for f, on in (("--quick", args.quick), ("--rehearsal", args.rehearsal),
                             ("--no-estimates", args.no_estimates)) if on]
    if args.rehearsal:
        plan = rehearsal_plan(args.deadline or 60.0, started_at)
    elif not torch.cuda.is_available() or args.device not in ("auto", "cuda"):
        why = ("--device cpu was given" if args.device not in ("auto", "cuda") else
               f"no CUDA device (torch {torch.__version__}, "
               f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'})")
        print(f"mirasol bench --suite gpu needs a CUDA GPU: {why}.\n"
              "Run it on a CUDA machine (bench/gpu_suite.sh OUT_DIR). Here, `mirasol check` "
              "runs the parity checks and `mirasol bench` the benchmark tables on the CPU; "
              "`--rehearsal` rehearses the suite on the CPU.", file=sys.stderr)
        return 2
    else:
        plan = gpu_plan(args.quick, args.deadline, started_at)
    if args.no_estimates:
        plan = replace(plan, use_estimates=False)
    text = " ".join(["mirasol bench --suite gpu", *flags,
                     *([f"--deadline {args.deadline:g}"] if args.deadline else [])])
    status = main(plan, Path(args.out_dir), text)
    if status == INTERRUPTED:
        # The report is on disk; interpreter shutdown could wait on compile workers or on
        # the GPU's queue, past the deadline.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
