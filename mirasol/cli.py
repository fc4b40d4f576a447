"""The ``mirasol`` command.

    mirasol check   parity of every op and backend available here, and a short benchmark
    mirasol bench   benchmark tables of the attention ops (ratios measured side by side)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch


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
    rows = run_check(device)
    print(format_check(rows))
    failed = [r for r in rows if not r.ok]
    if not args.no_bench:
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
    device = _device(args.device)
    from mirasol import benchmark

    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float32 if device.type == "cpu" else torch.bfloat16)
    setting = benchmark.Setting(heads=args.heads, head_dim=args.head_dim, dtype=dtype,
                                device=device.type)
    problems = benchmark.problems(setting, seqlen=args.seqlen)
    names = list(problems) if args.op == "all" else [args.op]
    tables = [benchmark.run(problems[name], reps=args.reps, progress=_progress)
              for name in names]
    text = "\n\n".join(benchmark.format_table(t) for t in tables)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"device": tables[0].device_name, "torch": torch.__version__,
                  "tables": {name: {"title": t.title, "baseline": t.baseline,
                                    "setting": {**asdict(setting), "dtype": str(dtype)},
                                    "rows": [asdict(m) for m in t.rows]}
                             for name, t in zip(names, tables)}}
        out.write_text(json.dumps(record, indent=2) + "\n")
        out.with_suffix(".md").write_text("```\n" + text + "\n```\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirasol", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="parity of every op and backend available here")
    check.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    check.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    check.set_defaults(func=cmd_check)

    bench = sub.add_parser("bench", help="the attention ops against SDPA (and FlexAttention, "
                                         "flash-attn, xformers on CUDA), side by side")
    bench.add_argument("--op", default="all",
                       choices=["all", "chunked", "cross-text", "cross-combiner"])
    bench.add_argument("--device", default="auto")
    bench.add_argument("--heads", type=int, default=8)
    bench.add_argument("--head-dim", type=int, default=64)
    bench.add_argument("--seqlen", type=int, default=4096, help="chunked: sequence length")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                       help="default: float32 on CPU, bfloat16 on CUDA")
    bench.add_argument("--reps", type=int, default=5, help="timed runs per variant (median)")
    bench.add_argument("--out", help="also write the tables as JSON (and .md) to this path")
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
