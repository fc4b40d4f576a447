"""The ``mirasol`` command.

    mirasol check   parity of every op and backend available here, and a short benchmark
    mirasol bench   the chunked-attention benchmark table (ratios measured side by side)
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
        problem = benchmark.Problem(heads=4, seqlen=1024, chunk_size=128, device=device.type,
                                    dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
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
    problem = benchmark.Problem(batch=args.batch, heads=args.heads, seqlen=args.seqlen,
                                head_dim=args.head_dim, chunk_size=args.chunk_size,
                                dtype=dtype, device=device.type)
    table = benchmark.run(problem, reps=args.reps, progress=_progress)
    print(benchmark.format_table(table))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"device": table.device_name, "baseline": table.baseline,
                  "problem": {**asdict(problem), "dtype": str(problem.dtype)},
                  "torch": torch.__version__, "rows": [asdict(m) for m in table.rows]}
        out.write_text(json.dumps(record, indent=2) + "\n")
        out.with_suffix(".md").write_text("```\n" + benchmark.format_table(table) + "\n```\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirasol", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="parity of every op and backend available here")
    check.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    check.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    check.set_defaults(func=cmd_check)

    bench = sub.add_parser("bench", help="chunked attention against SDPA (and FlexAttention, "
                                         "flash-attn on CUDA), side by side")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--heads", type=int, default=8)
    bench.add_argument("--seqlen", type=int, default=4096)
    bench.add_argument("--head-dim", type=int, default=64)
    bench.add_argument("--chunk-size", type=int, default=256)
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                       help="default: float32 on CPU, bfloat16 on CUDA")
    bench.add_argument("--reps", type=int, default=5, help="timed runs per variant (median)")
    bench.add_argument("--out", help="also write the table as JSON (and .md) to this path")
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
