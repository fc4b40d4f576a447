"""The cost of one training checkpoint (`mirasol train`'s save_training_state: weights,
AdamW state and trainer state, written atomically with fsync) for the presets that train on
a CPU: median seconds over repeats and bytes on disk. Writes
bench/results/checkpoint-cost-<device>.md.

    python bench/checkpoint_cost.py [--presets tiny small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mirasol.benchmark import card_slug, device_label
from mirasol.model import Mirasol, preset
from mirasol.train import Context, TrainConfig, optimizer, save_training_state

RESULTS = Path(__file__).parent / "results"


def measure(name: str, repeats: int) -> tuple[int, float, int]:
    config = TrainConfig(preset=name)
    model = Mirasol(preset(name))
    opt = optimizer(model, config)
    for p in model.parameters():  # one step, so AdamW holds its two moments
        p.grad = torch.randn_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    ctx = Context(0, 1, torch.device("cpu"))
    times = []
    with tempfile.TemporaryDirectory() as out:
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            save_training_state(Path(out), step, model, model, opt, sched, config, ctx)
            times.append(time.perf_counter() - start)
        folder = Path(out) / "checkpoints" / f"step-{repeats:07d}"
        size = sum(f.stat().st_size for f in folder.iterdir())
    return sum(p.numel() for p in model.parameters()), statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = device_label("cpu")
    lines = [f"# Checkpoint cost: {device}", "",
             f"`python bench/checkpoint_cost.py --presets {' '.join(args.presets)} --repeats "
             f"{args.repeats}`: one training checkpoint (weights + AdamW state + trainer "
             "state, atomic, fsync), median of the repeats.", "",
             "| preset | parameters | seconds | bytes on disk |", "|---|---|---|---|"]
    for name in args.presets:
        params, seconds, size = measure(name, args.repeats)
        lines.append(f"| {name} | {params:,} | {seconds:.3f} | {size:,} |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"checkpoint-cost-{card_slug(device)}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
