"""Live Mirasol's cost over a long stream: the tiny preset with a window (``window_chunks``
W) pushed one chunk at a time, its per-chunk time (push + a greedy answer), stream state
bytes and process RSS at chunk counts up to --chunks, against what answering at that moment
costs without streaming: a whole-clip forward (encode + answer) of every chunk so far, on
the same weights without the window. Writes bench/results/stream-cost-<device>.md and, with
matplotlib, a plot under bench/results/plots/.

    python bench/stream_cost.py [--chunks 2000] [--window 4] [--sample 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from mirasol.benchmark import card_slug, device_label
from mirasol.data import ByteTokenizer
from mirasol.model import Mirasol, preset

RESULTS = Path(__file__).parent / "results"
TOK = ByteTokenizer()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _chunk(config, seed: int):
    gen = torch.Generator().manual_seed(seed)
    size = config.video.image_size
    video = torch.rand(1, config.frames_per_chunk, 3, size, size, generator=gen)
    audio = torch.rand(1, round(config.frames_per_chunk / config.fps * config.audio.sample_rate),
                       generator=gen) * 2 - 1
    return video, audio


def _answer(model, **clip) -> None:
    prompt = torch.tensor([TOK.prompt("colour during high tone?")])
    model.generate(prompt=prompt, max_new_tokens=4, eos_token_id=TOK.EOS,
                   pad_token_id=TOK.PAD, **clip)


@torch.no_grad()
def measure(chunks: int, window: int, marks: list[int], sample: int) -> list[dict]:
    torch.manual_seed(0)
    model = Mirasol(preset("tiny", window_chunks=window)).eval()
    whole = model.without_window()
    video, audio = _chunk(model.config, 0)
    stream, rows, times = model.stream(1), [], []
    for t in range(1, chunks + 1):  # the stream alone first: its RSS is the stream's
        start = time.perf_counter()
        stream.push(video, audio)
        _answer(model, latents=stream.latents)
        times.append(time.perf_counter() - start)
        if t in marks:
            rows.append({"chunks": t, "minutes": stream.seconds / 60,
                         "stream_ms": statistics.median(times[-sample:]) * 1e3,
                         "state_kib": stream.nbytes / 1024, "rss_mib": rss_mib()})
    for row in rows:
        start = time.perf_counter()
        _answer(whole, video=video.repeat(1, row["chunks"], 1, 1, 1),
                audio=audio.repeat(1, row["chunks"]))
        row["whole_ms"] = (time.perf_counter() - start) * 1e3
        print(row, flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["minutes"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(x, [r["stream_ms"] for r in rows], "o-", label="stream: push + answer")
    left.plot(x, [r["whole_ms"] for r in rows], "s-", label="whole clip so far: forward + answer")
    left.set(xlabel="minutes of video", ylabel="ms per answer", yscale="log")
    left.legend(fontsize=8)
    right.plot(x, [r["state_kib"] for r in rows], "o-", label="stream state (KiB)")
    right.plot(x, [r["rss_mib"] for r in rows], "s-", label="process RSS (MiB)")
    right.set(xlabel="minutes of video", ylim=(0, None))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--sample", type=int, default=20,
                        help="pushes each per-chunk median is taken over")
    args = parser.parse_args()
    marks = sorted({m for m in (10, 100, 500, 1000, 2000, args.chunks) if m <= args.chunks})
    rows = measure(args.chunks, args.window, marks, args.sample)
    device = device_label("cpu")
    lines = [f"# Live Mirasol's cost over a stream: {device}", "",
             f"`python bench/stream_cost.py --chunks {args.chunks} --window {args.window} "
             f"--sample {args.sample}`: the tiny preset (1-s chunks) with window_chunks="
             f"{args.window}, one chunk pushed and one 4-token greedy answer per second of "
             f"video (median of the last {args.sample} pushes), against answering at that "
             "moment by a whole-clip forward of every chunk so far (same weights, no "
             "window; one run, after the stream). Stream state: MirasolStream.nbytes; RSS of this "
             "process during the stream.", "",
             "| chunks | minutes | stream ms/chunk | whole-clip ms | ratio | state KiB | "
             "RSS MiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['chunks']} | {r['minutes']:.1f} | {r['stream_ms']:.1f} | "
                     f"{r['whole_ms']:.0f} | {r['whole_ms'] / r['stream_ms']:.0f}x | "
                     f"{r['state_kib']:.0f} | {r['rss_mib']:.0f} |")
    slug = card_slug(device)
    out = RESULTS / f"stream-cost-{slug}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        (RESULTS / "plots").mkdir(exist_ok=True)
        plot(rows, RESULTS / "plots" / f"stream-cost-{slug}.png")
    except ImportError:
        print("matplotlib missing: no plot")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
