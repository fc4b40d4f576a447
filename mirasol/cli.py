"""The ``mirasol`` command.

    mirasol check   parity of every op and backend available here, and a short benchmark
    mirasol bench   benchmark tables of the attention ops (ratios measured side by side),
                    the block-causal family against its targets (--op family), and of
                    the model's cost at 4x the frames (--op scaling); --suite gpu:
                    parity, benchmarks against the rivals and a report, on a CUDA machine
    mirasol params  parameter counts per component of every preset
    mirasol profile registers, shared memory, spills, occupancy and tensor-core use of every
                    kernel config, cross-compiled for sm_80 .. sm_100 (no GPU needed)
    mirasol train   train (or resume) on synthetic audio-video QA or a manifest; torchrun-able
    mirasol eval    accuracy and exact match of a checkpoint per question kind
    mirasol ask     answer a question about a video file
    mirasol demo    the tiny model and its ablations trained, evaluated and reported
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from mirasol._format import format_rows
from mirasol._options import add_options, from_options


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        # The triton backend runs on CPU through Triton's interpreter, which must be
        # switched on before triton is first imported (torch._dynamo imports it too).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return torch.device(name)


def _progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    device = _device(args.device)  # first: it may switch on the interpreter
    from mirasol import benchmark
    from mirasol.testing.check import format_check, run_check

    print(f"parity against the float64 oracle on {device} "
          "(err <= 2x reference err + floor; 3x for gradients):")
    rows = run_check(device, quick=args.quick)
    print(format_check(rows))
    failed = [r for r in rows if not r.ok]
    if not (args.no_bench or args.quick):
        setting = benchmark.Setting(heads=4, device=device.type,
                                    dtype=torch.float32 if device.type == "cpu"
                                    else torch.bfloat16)
        for problem in (benchmark.ChunkedProblem(seqlen=1024, chunk_size=128, setting=setting),
                        benchmark.problems(setting)["cross-text"]):
            print()
            print(benchmark.format_table(benchmark.run(problem, reps=3, progress=_progress)))
    if failed:
        print(f"\n{len(failed)} parity check(s) FAILED", file=sys.stderr)
        return 1
    print("\nall parity checks passed")
    return 0


def cmd_bench(args) -> int:
    if args.suite:
        return _gpu_suite(args)
    if args.sweep:
        return _bench_sweep(args)
    if args.calibrate_cpu:
        from mirasol.benchmark import calibrate

        fits = calibrate.measure(reps=args.reps)
        calibrate.write(fits)
        print(f"{calibrate.report(fits)}\nwrote {calibrate.OUT}")
        return 0
    device = _device(args.device)
    from mirasol import benchmark

    load_before = os.getloadavg()
    if args.op == "scaling":
        table = benchmark.scaling(reps=args.reps, device=device.type, progress=_progress)
        text, device_name = benchmark.format_scaling(table), table.device_name
        records = {"scaling": asdict(table)}
    elif args.op == "family":
        text, device_name, records = _bench_family(args, device, benchmark)
    else:
        dtype = getattr(torch, args.dtype) if args.dtype else (
            torch.float32 if device.type == "cpu" else torch.bfloat16)
        setting = benchmark.Setting(heads=args.heads, head_dim=args.head_dim, dtype=dtype,
                                    device=device.type)
        problems = benchmark.problems(setting, seqlen=args.seqlen or 4096)
        names = list(problems) if args.op == "all" else [args.op]
        peak = (benchmark.card_peak(torch.cuda.get_device_name(device), dtype)
                if device.type == "cuda" else None)
        tables = [benchmark.run(problems[name], reps=args.reps, peak=peak, progress=_progress)
                  for name in names]
        text = "\n\n".join(benchmark.format_table(t) for t in tables)
        device_name = tables[0].device_name
        records = {name: benchmark.table_record(t) for name, t in zip(names, tables)}
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command, load_after = _bench_command(args), os.getloadavg()
        record = {"device": device_name, "torch": torch.__version__, "command": command,
                  "load_average": {"start": load_before, "end": load_after},
                  "tables": records}
        out.write_text(json.dumps(record, indent=2) + "\n")
        loads = " and ".join(f"{' '.join(f'{x:.2f}' for x in load)} at the {when}"
                             for load, when in ((load_before, "start"), (load_after, "end")))
        out.with_suffix(".md").write_text(f"command: `{command}`\n\nload average (1, 5, 15 "
                                          f"min): {loads}\n\n```\n{text}\n```\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _bench_sweep(args) -> int:
    """--sweep: the chunked grid (mirasol.benchmark.sweep), its table, and --plot's PNGs."""
    from mirasol.benchmark import Setting, sweep

    device = _device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float32 if device.type == "cpu" else torch.bfloat16)
    setting = Setting(heads=args.heads, head_dim=args.head_dim, dtype=dtype,
                      device=device.type)
    seqlens = tuple(args.sweep_seqlens or sweep.SEQLENS)
    chunks = tuple(args.sweep_chunks or sweep.CHUNKS)
    points = sweep.sweep(setting, seqlens=seqlens, chunks=chunks, reps=args.reps,
                         progress=_progress)
    text = sweep.format_sweep(points, setting)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"command: `{_bench_command(args)}`\n\n{text}\n")
        print(f"wrote {out}")
    if args.plot:
        for path in sweep.plot(points, setting, Path(args.plot)):
            print(f"wrote {path}")
    return 0


def _bench_family(args, device: torch.device, benchmark):
    """``--op family``: each family table (benchmark.family) in each dtype (fp32 and bf16
    unless --dtype), then their targets in one table. Returns (text, device, records)."""
    dtypes = [args.dtype] if args.dtype else ["float32", "bfloat16"]
    tables, records = [], {}
    for dtype in dtypes:
        setting = benchmark.Setting(heads=args.heads, head_dim=args.head_dim,
                                    dtype=getattr(torch, dtype), device=device.type)
        peak = (benchmark.card_peak(torch.cuda.get_device_name(device), setting.dtype)
                if device.type == "cuda" else None)
        family = benchmark.family(setting, seqlen=args.seqlen or 8192,
                                  chunk_size=args.chunk_size)
        for name, problem in family.items():
            table = benchmark.run(problem, reps=args.reps, peak=peak, progress=_progress)
            tables.append(table)
            records[f"{name}/{dtype}"] = benchmark.table_record(table)
    gflops = device.type == "cpu"
    text = "\n\n".join([*(benchmark.format_table(t, gflops=gflops) for t in tables),
                         "targets (median time of the first over the second, side by side "
                         "in this run; reported, not asserted):\n"
                         + benchmark.format_targets(tables)])
    return text, tables[0].device_name, records


def _bench_command(args) -> str:
    """The command that reproduces this run: its options spelled out, and the thread
    count's environment variable when set."""
    if args.sweep:
        options = ["--sweep", f"--device {args.device}", f"--reps {args.reps}"]
        options += [f"--sweep-seqlens {' '.join(map(str, args.sweep_seqlens))}"
                    ] if args.sweep_seqlens else []
        options += [f"--sweep-chunks {' '.join(map(str, args.sweep_chunks))}"
                    ] if args.sweep_chunks else []
    else:
        options = [f"--op {args.op}", f"--device {args.device}", f"--reps {args.reps}"]
    if args.op != "scaling":
        options += [f"--heads {args.heads}", f"--head-dim {args.head_dim}"]
        options += [f"--dtype {args.dtype}"] if args.dtype else []
        options += [f"--seqlen {args.seqlen}"] if args.seqlen else []
        options += [f"--chunk-size {args.chunk_size}"] if args.op == "family" else []
    options += [f"--out {args.out}"] if args.out else []
    options += [f"--plot {args.plot}"] if args.sweep and args.plot else []
    env = (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
           if "OMP_NUM_THREADS" in os.environ else "")
    return f"{env}python -m mirasol bench {' '.join(options)}"


def _gpu_suite(args) -> int:
    if args.rehearsal:
        _device("cpu")  # before the suite's imports: triton's interpreter
    from mirasol import suite

    return suite.command(args)


def _millions(n: int) -> str:
    """n to 3 significant digits in millions (M) or billions (B); "-" for none."""
    if not n:
        return "-"
    value, unit = (n / 1e9, "B") if n >= 1e9 else (n / 1e6, "M")
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}{unit}"


def cmd_params(args) -> int:
    from mirasol.model import PRESETS, Mirasol, preset

    if args.preset is not None and args.preset not in PRESETS:
        print(f"mirasol params: unknown preset {args.preset!r}; choose one of "
              f"{', '.join(PRESETS)}", file=sys.stderr)
        return 2
    rows = []
    for name in [args.preset] if args.preset else list(PRESETS):
        for audio in (True, False):
            # Meta tensors have shapes but no storage: mirasol3b's 12 GB of float32 weights
            # are never allocated.
            with torch.device("meta"):
                model = Mirasol(preset(name) if audio else preset(name, audio=None))
            counts = model.parameter_counts()
            rows.append((name, "yes" if audio else "no", *map(_millions, counts.values()),
                         f"{counts['audio-video'] / counts['total']:.0%}"))
    print("parameters per component (M = 1e6, B = 1e9); audio-video is everything but the "
          "text decoder")
    print(format_rows([("preset", "audio", *counts, "A/V share"), *rows]))
    return 0


def cmd_profile(args) -> int:
    from mirasol import profile

    try:
        return profile.main(archs=args.arch, ops=args.op, kernels=args.kernel,
                            dtypes=args.dtype, sizes=args.size, jobs=args.jobs, out=args.out,
                            progress=_progress, known=args.known, gate=args.gate)
    except ValueError as e:
        print(f"mirasol profile: {e}", file=sys.stderr)
        return 2


def cmd_train(args) -> int:
    from mirasol.train import TrainConfig, train

    train(from_options(TrainConfig, args))
    return 0


def cmd_eval(args) -> int:
    from mirasol.train import EvalConfig, evaluate_checkpoint

    result = evaluate_checkpoint(from_options(EvalConfig, args))
    rows = [("kind", "accuracy", "exact match", "count")]
    for kind, r in [*result["by_kind"].items(), ("all", result)]:
        rows.append((kind, f"{r['accuracy']:.1%}", f"{r['exact_match']:.1%}", str(r["count"])))
    print(format_rows(rows))
    return 0


def _load_model(checkpoint: str, device: str):
    from mirasol.model import load_checkpoint
    from mirasol.train import latest_checkpoint

    folder = Path(checkpoint)
    if not (folder / "model.safetensors").exists():
        folder = latest_checkpoint(folder) or folder  # a run folder: its last checkpoint
    return load_checkpoint(folder, device=device)


def cmd_ask(args) -> int:
    from mirasol.demo import ask

    model = _load_model(args.checkpoint, args.device)
    result = ask(model, args.video, args.question, num_frames=args.frames, start=args.start,
                 num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    print(result["answer"])
    _progress(f"{result['frames']} frames ({result['seconds']:.1f} s) decoded in "
              f"{result['decode_ms']:.0f} ms, answered in {result['answer_ms']:.0f} ms")
    return 0


def cmd_watch(args) -> int:
    from mirasol.data import MediaError
    from mirasol.live import watch

    model = _load_model(args.checkpoint, args.device)
    source = sys.stdin.buffer if args.video == "-" else args.video
    last = None
    try:
        for answer in watch(model, source, args.ask or ["what is happening?"],
                            every=args.every, chunks_per_push=args.chunks_per_push,
                            capacity_chunks=args.capacity_chunks, num_beams=args.num_beams,
                            max_new_tokens=args.max_new_tokens):
            print(f"[{answer.seconds:8.1f} s] {answer.question} {answer.answer}", flush=True)
            last = answer
    except KeyboardInterrupt:
        _watched(last, "stopped")
        return 130
    except MediaError as error:
        _watched(last, "source failed")
        print(f"mirasol watch: {error}", file=sys.stderr)
        return 1
    _watched(last, "done")
    return 0


def _watched(last, how: str) -> None:
    if last is None:
        _progress(f"{how}: nothing watched yet")
    else:
        _progress(f"{how}: {last.seconds:.1f} s of video in {last.wall:.1f} s "
                  f"({last.rtf:.1f}x real time), stream state {last.nbytes / 1024:.0f} KiB")


def cmd_export(args) -> int:
    from mirasol.train import export

    print(f"wrote {export(args.checkpoint, args.out)}")
    return 0


def cmd_demo(args) -> int:
    from mirasol.demo import DemoConfig, run_demo

    run_demo(from_options(DemoConfig, args))
    return 0


# -- the command line: one function per command adds its parser ---------------------------


def add_check(sub) -> None:
    check = sub.add_parser("check", help="parity of every op and backend available here")
    check.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    check.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    check.add_argument("--quick", action="store_true",
                       help="one case per op and backend in float32 (and bfloat16 on CUDA), "
                            "no benchmark: an install's smoke test, seconds")
    check.set_defaults(func=cmd_check)


def add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="the attention ops against SDPA (and FlexAttention, "
                                         "flash-attn, xformers on CUDA), side by side")
    bench.add_argument("--op", default="all",
                       choices=["all", "chunked", "cross-text", "cross-combiner", "family",
                                "scaling"],
                       help="all: the three attention tables. family: the block-causal "
                            "family at issue 19's shapes (window 4 + sinks, a one-chunk cache "
                            "prefill, teacher forcing) in fp32 and bf16 (--dtype: one), "
                            "against SDPA and compiled FlexAttention, the issue's targets as "
                            "ratios; not part of all. scaling: the whole small "
                            "model at 128 vs 512 frames against a flat transformer baseline "
                            "(float32, about 30 s on 2 CPU cores; not part of all; --heads, "
                            "--head-dim, --seqlen and --dtype do not apply)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--heads", type=int, default=8)
    bench.add_argument("--head-dim", type=int, default=64)
    bench.add_argument("--seqlen", type=int, default=None,
                       help="chunked: sequence length (default 4096); family: sequence "
                            "length and prefill keys (default 8192)")
    bench.add_argument("--chunk-size", type=int, default=512,
                       help="family: chunk size (the prefill's chunk is twice it)")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                       help="default: float32 on CPU, bfloat16 on CUDA")
    bench.add_argument("--reps", type=int, default=5, help="timed runs per variant (median)")
    bench.add_argument("--out", help="also write the tables as JSON (and .md) to this path")
    bench.add_argument("--suite", choices=["gpu"],
                       help="gpu: on a CUDA machine, parity of every op and backend, all "
                            "tables in bf16 against SDPA, FlexAttention, flash-attn and "
                            "xformers, TFLOP/s as a fraction of the card's peak; writes "
                            "<out-dir>/<card>.md and .json (the options above do not apply)")
    bench.add_argument("--quick", action="store_true",
                       help="--suite gpu: bf16 parity and two tables; deadline 150 s")
    bench.add_argument("--deadline", type=float, default=None,
                       help="--suite gpu: seconds from --started-at by which the run ends, "
                            "report written (default 300, --quick 150)")
    bench.add_argument("--started-at", type=float, default=None,
                       help="--suite gpu: when the device command started (epoch seconds)")
    bench.add_argument("--rehearsal", action="store_true",
                       help="--suite gpu: rehearse on the CPU (tiny shapes, interpreter)")
    bench.add_argument("--no-estimates", action="store_true",
                       help="--suite gpu: start every section; only the deadline cuts")
    bench.add_argument("--out-dir", default="bench/results",
                       help="--suite gpu: where the report goes")
    bench.add_argument("--sweep", action="store_true",
                       help="chunked causal attention over N x chunk (default N 64..16384, "
                            "chunk 8..512), fwd and fwd+bwd, against SDPA dense mask, causal "
                            "SDPA and (on CPU, forward) FlexAttention; the table gives each "
                            "point's ratios and the torch backend's plan (--out: as "
                            "Markdown)")
    bench.add_argument("--sweep-seqlens", type=int, nargs="+", help="--sweep: the N values")
    bench.add_argument("--sweep-chunks", type=int, nargs="+", help="--sweep: the chunk sizes")
    bench.add_argument("--plot", help="--sweep: write PNGs of time and GFLOP/s against N here")
    bench.add_argument("--calibrate-cpu", action="store_true",
                       help="measure the torch backend's CPU cost model (fused calls, "
                            "unmasked and masked, forward and backward; about 10 s) and "
                            "write it to mirasol/ops/_cpu_costs.py, which the planner reads: "
                            "run with the OMP_NUM_THREADS the machine will use")
    bench.set_defaults(func=cmd_bench)


def add_params(sub) -> None:
    params = sub.add_parser("params", help="parameter counts per component of the presets")
    params.add_argument("--preset", help="one preset (default: all of them)")
    params.set_defaults(func=cmd_params)


def add_profile(sub) -> None:
    prof = sub.add_parser("profile", help="cross-compile every kernel config for each GPU "
                                          "generation: registers, shared memory, spills, "
                                          "occupancy, tensor cores")
    prof.add_argument("--arch", type=int, nargs="+",
                      help="compute capabilities among 80 86 89 90 100 (default: all)")
    prof.add_argument("--op", nargs="+", help="attention and/or token_pool (default: both)")
    prof.add_argument("--kernel", nargs="+", help="e.g. attn_fwd attn_bwd_delta attn_bwd_dkdv "
                                                  "attn_bwd_dq token_pool_fwd token_pool_bwd")
    prof.add_argument("--dtype", nargs="+", choices=["float16", "bfloat16", "float32"])
    prof.add_argument("--size", type=int, nargs="+",
                      help="only these head dims (64 80 128 256) / output tokens (16 32 64)")
    prof.add_argument("--jobs", type=int, default=os.cpu_count(),
                      help="compile processes (default: one per CPU core)")
    prof.add_argument("--out", help="also write the records as JSON to this path and a "
                                    "Markdown table beside it (.md), e.g. "
                                    "bench/results/profile.json")
    prof.add_argument("--gate", action="store_true",
                      help="the CI gates' compiles: bf16 and fp32 at each table bucket on "
                           "sm_80, sm_86, sm_90, sm_100 (no other filter)")
    prof.add_argument("--known", metavar="PROFILE_JSON",
                      help="take each compile whose compile key this written profile holds "
                           "from it, and recompile one of them per kernel and arch (the one "
                           "with the most registers) to check it (CI's gates: only what "
                           "changed compiles)")
    prof.set_defaults(func=cmd_profile)


class _CommandParser(argparse.ArgumentParser):
    """A command's parser that can add its arguments only when the command is parsed or its
    help printed: the config dataclasses live beside the model, and importing the model
    imports triton, which must wait until :func:`_device` may have switched on the
    interpreter."""

    def __init__(self, *args, add_arguments: Callable[[argparse.ArgumentParser], None]
                 | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _config_command(sub, name: str, help: str, config: str, func) -> None:
    """Command ``name`` whose arguments are the fields of the dataclass ``config``
    ("module:Class"), defaults shown in its help."""
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        module, cls = config.split(":")
        add_options(parser, getattr(importlib.import_module(module), cls))

    sub.add_parser(name, help=help, description=help, add_arguments=add_arguments,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter
                   ).set_defaults(func=func)


def add_train(sub) -> None:
    _config_command(sub, "train", "train on the synthetic task or a manifest (torchrun for "
                                  "several processes)", "mirasol.train:TrainConfig", cmd_train)


def add_eval(sub) -> None:
    _config_command(sub, "eval", "accuracy and exact match of a checkpoint, per question kind",
                    "mirasol.train:EvalConfig", cmd_eval)


def add_ask(sub) -> None:
    ask = sub.add_parser("ask", help="answer a question about a video file")
    ask.add_argument("video")
    ask.add_argument("question")
    ask.add_argument("--checkpoint", default="runs/demo/model",
                     help="a checkpoint folder or a run folder (its last checkpoint)")
    ask.add_argument("--frames", type=int, help="frames to sample (default: the whole clip)")
    ask.add_argument("--start", type=float, default=0.0, help="seconds into the clip")
    ask.add_argument("--num-beams", type=int, default=1)
    ask.add_argument("--max-new-tokens", type=int, default=32)
    ask.add_argument("--device", default="cpu")
    ask.set_defaults(func=cmd_ask)


def add_watch(sub) -> None:
    watch = sub.add_parser("watch", help="stream a video file or pipe through a model and "
                                         "answer questions as it plays")
    watch.add_argument("video", help="a media file, or - for a pipe on stdin")
    watch.add_argument("--ask", action="append", metavar="QUESTION",
                       help="a question to answer (repeat for several)")
    watch.add_argument("--checkpoint", default="runs/demo/model",
                       help="a checkpoint folder or a run folder (its last checkpoint)")
    watch.add_argument("--every", type=float,
                       help="answer every this many seconds of video (default: every push)")
    watch.add_argument("--chunks-per-push", type=int, default=1)
    watch.add_argument("--capacity-chunks", type=int,
                       help="for a model without a window: the most chunks to watch")
    watch.add_argument("--num-beams", type=int, default=1)
    watch.add_argument("--max-new-tokens", type=int, default=16)
    watch.add_argument("--device", default="cpu")
    watch.set_defaults(func=cmd_watch)


def add_export(sub) -> None:
    export = sub.add_parser("export", help="a whole checkpoint (model.safetensors + "
                                           "config.json) from a run's, sharded or not")
    export.add_argument("checkpoint", help="a run folder (its last checkpoint) or a checkpoint")
    export.add_argument("out", help="the folder to write")
    export.set_defaults(func=cmd_export)


def add_demo(sub) -> None:
    _config_command(sub, "demo", "train the tiny model and its ablations on the synthetic "
                                 "task, report, ask about a real clip",
                    "mirasol.demo:DemoConfig", cmd_demo)


COMMANDS = (add_check, add_bench, add_params, add_profile, add_train, add_eval, add_export,
            add_ask, add_watch, add_demo)


def parser() -> argparse.ArgumentParser:
    """The ``mirasol`` command line, every command's arguments included."""
    from mirasol import __version__

    top = argparse.ArgumentParser(prog="mirasol", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"mirasol {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for add in COMMANDS:
        add(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
