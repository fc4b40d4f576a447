"""Context parallelism on CPU (gloo): one chunk-causal attention layer, forward and
backward, over 1, 2 and 4 processes, for each mode of mirasol.distributed. Printed side
by side, per rank (the worst rank where ranks differ):

* activation memory: the bytes autograd saves for the backward during the forward (unique
  storages; what the layer holds until its backward), against one process's;
* bytes sent between ranks in all, forward and backward, counted at the collectives (a
  dispatch mode sees every ``_c10d_functional.all_to_all_single``), beside the formula: Ulysses
  sends ``(R - 1) / R`` of q, k, v and the output; chunk shards send each rank the keys and
  values of other ranks' chunks that its queries' masks see (counted chunk by chunk from
  the rule, not from the plan), and their gradients back (the ring: the keys once more);
* work balance: visible (query, key) pairs per rank, max / min;
* fwd+bwd wall time, median per rank, the slowest rank (R processes share this machine's
  cores: a balance check, not a speed-up).

Writes bench/results/context-parallel-<device>.md.

    python bench/context_parallel.py [--seqlens 2048 4096 8192] [--worlds 1 2 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from mirasol import chunked_causal_attention
from mirasol.benchmark import card_slug, device_label
from mirasol.distributed import ChunkShards, chunk_sharded_attention, ulysses_attention

RESULTS = Path(__file__).parent / "results"
HEADS, KV_HEADS, HEAD_DIM, CHUNK = 8, 4, 64, 256
MASKS = {"chunk-causal": {}, "window 4 + sinks 256": dict(window_chunks=4, sink_tokens=256)}
# Chunk shards: (balance, exchange); the ring serves attention without a window only.
MODES = {"ulysses": None, "chunks, contiguous, gather": ("contiguous", "gather"),
         "chunks, zigzag, gather": ("zigzag", "gather"), "chunks, zigzag, ring": ("zigzag",
                                                                                  "ring")}


class _Sent(TorchDispatchMode):
    """Bytes that leave this rank in each all-to-all, by phase."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank, self.phase, self.bytes = rank, "fwd", {"fwd": 0, "bwd": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # The functional all-to-all (input, output splits, input splits, group) and
        # torch.distributed's (output, input, group, output splits, input splits, ...).
        x, splits = None, None
        if func is torch.ops._c10d_functional.all_to_all_single.default:
            x, splits = args[0], args[2]
        elif func is torch.ops.c10d.alltoall_base_.default:
            x, splits = args[1], args[4]
        if x is not None:
            row = x.nbytes // max(x.shape[0], 1)
            splits = splits or [x.shape[0] // dist.get_world_size()] * dist.get_world_size()
            self.bytes[self.phase] += row * (sum(splits) - splits[self.rank])
        return func(*args, **(kwargs or {}))


def _saved_bytes(run) -> tuple[torch.Tensor, int]:
    """run()'s output and the bytes of the unique storages autograd saved for backward."""
    seen: dict[int, int] = {}

    def pack(t):
        # A collective's output is saved as its wrapper (AsyncCollectiveTensor): count the
        # tensor inside.
        storage = getattr(t, "elem", t).untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(seen.values())


def _chunk_sets(shards: ChunkShards, rank: int, rule: dict) -> tuple[int, int]:
    """The formula for chunk shards: (keys of other ranks this rank's queries see, visible
    pairs), from the rule chunk by chunk: chunk x sees chunks [x - window + 1, x] and the
    sink tokens."""
    (n,), cs, owner = shards.seqlens, shards.chunk_size, shards._owner[0]
    window, sinks = rule.get("window_chunks"), rule.get("sink_tokens", 0)
    size = [min(cs, n - c * cs) for c in range(len(owner))]
    seen_chunks, sink_keys, pairs = set(), 0, 0
    for x in (c for c in range(len(owner)) if owner[c] == rank):
        first = 0 if window is None else max(0, x - window + 1)
        seen_chunks |= set(range(first, x + 1))
        sinks_before = min(sinks, n, first * cs)
        pairs += size[x] * (sum(size[first:x + 1]) + sinks_before)
    if window is not None:  # sink tokens outside every window of this rank's chunks
        sink_keys = sum(1 for j in range(min(sinks, n)) if j // cs not in seen_chunks
                        and owner[j // cs] != rank)
    remote = sum(size[c] for c in seen_chunks if owner[c] != rank)
    return remote + sink_keys, pairs


def _layer(mode: str, q, k, v, shards: ChunkShards, rule: dict) -> torch.Tensor:
    if mode == "ulysses":
        return ulysses_attention(chunked_causal_attention, q, k, v, CHUNK, **rule)
    if mode == "one process":
        return chunked_causal_attention(q, k, v, CHUNK, **rule)
    return chunk_sharded_attention(q, k, v, shards, exchange=MODES[mode][1], **rule)


def worker(seqlens: list[int], reps: int, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    rows = []
    for n in seqlens:
        for mask, rule in MASKS.items():
            for mode in (MODES if world > 1 else ("one process",)):
                if mode.endswith("ring") and "window_chunks" in rule:
                    continue
                shards = ChunkShards(CHUNK, (n,), world, (MODES.get(mode) or ("zigzag",))[0])
                local = n // world if mode == "ulysses" else shards.count(rank)
                q = torch.randn(1, HEADS, local, HEAD_DIM, requires_grad=True)
                k, v = (torch.randn(1, KV_HEADS, local, HEAD_DIM, requires_grad=True)
                        for _ in range(2))
                run = functools.partial(_layer, mode, q, k, v, shards, rule)
                sent, times = _Sent(rank), []
                for i in range(reps + 1):
                    dist.barrier()
                    start = time.perf_counter()
                    with sent:
                        out_, saved = _saved_bytes(run)
                        sent.phase = "bwd"
                        out_.backward(torch.ones_like(out_))
                        sent.phase = "fwd"
                    times.append(time.perf_counter() - start)
                    if i == 0:
                        first = dict(sent.bytes)
                item = 4  # fp32
                if mode == "ulysses":
                    formula = 2 * (world - 1) * local // world * (2 * HEADS + 2 * KV_HEADS) \
                        * HEAD_DIM * item  # the backward sends as much as the forward
                    pairs = shards.visible_pairs(**rule)
                    work = sum(pairs) // world  # every rank: 1/R of the heads, all pairs
                else:
                    remote, work = _chunk_sets(shards, rank, rule)
                    # The ring sends the keys again in the backward, beside the gradients.
                    formula = remote * 2 * KV_HEADS * HEAD_DIM * item * (
                        3 if mode.endswith("ring") else 2)
                rows.append(dict(n=n, mask=mask, mode=mode, rank=rank, saved=saved,
                                 sent_fwd=first["fwd"], sent_bwd=first["bwd"],
                                 formula=formula, work=work,
                                 seconds=statistics.median(times[1:])))
    (out / f"rank{rank}.json").write_text(json.dumps(rows))
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.seqlens, args.reps, args.worker)
    rows = []
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // world))}
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={world}", __file__, "--worker", tmp,
                            "--reps", str(args.reps), "--seqlens",
                            *map(str, args.seqlens)], env=env, check=True)
            for f in sorted(Path(tmp).glob("rank*.json")):
                rows += [dict(r, world=world) for r in json.loads(f.read_text())]
    print("\n".join(report(rows, args)))


def report(rows: list[dict], args) -> list[str]:
    device = device_label("cpu")
    lines = [f"# Context parallelism: {device}", "",
             f"`python bench/context_parallel.py --seqlens {' '.join(map(str, args.seqlens))} "
             f"--worlds {' '.join(map(str, args.worlds))} --reps {args.reps}`: one "
             f"chunk-causal attention layer (B=1, H={HEADS}, H_kv={KV_HEADS}, D={HEAD_DIM}, "
             f"chunk {CHUNK}, fp32), forward and backward, gloo. Per rank, the worst rank: "
             "memory saved for the backward (and its ratio to one process's); MB that cross "
             "between ranks in all, forward + backward, as counted at the collectives, beside "
             "the formula; visible pairs max / min over the ranks, and the slowest rank's "
             "median fwd+bwd time (the ranks share the machine's cores).", "",
             "| N | mask | mode | R | saved MB | x one process | MB sent, fwd+bwd | formula MB "
             "| pairs max/min | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    one = {(r["n"], r["mask"]): r["saved"] for r in rows if r["world"] == 1}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["n"], r["mask"], r["mode"], r["world"]), []).append(r)
    for (n, mask, mode, world), ranks in sorted(groups.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][1],
                                                                 kv[0][3], kv[0][2])):
        saved = max(r["saved"] for r in ranks)
        sent = sum(r["sent_fwd"] + r["sent_bwd"] for r in ranks)
        formula = sum(r["formula"] for r in ranks)
        work = [r["work"] for r in ranks]
        lines.append(f"| {n} | {mask} | {mode} | {world} | {saved / 1e6:.1f} | "
                     f"{saved / one[(n, mask)]:.2f} | {sent / 1e6:.2f} | {formula / 1e6:.2f} | "
                     f"{max(work) / max(min(work), 1):.2f} | "
                     f"{max(r['seconds'] for r in ranks):.3f} |")
    out = RESULTS / f"context-parallel-{card_slug(device)}.md"
    out.write_text("\n".join(lines) + "\n")
    return lines + ["", f"written: {out}"]


if __name__ == "__main__":
    main()
