"""The whole model, not one op: forward and forward+backward time and peak memory of
Mirasol's ``small`` preset at 128 and 512 frames (4 and 16 chunks), against
:class:`~mirasol.model.baseline.FlatBaseline` (one transformer over all frames' tokens).
Target: 4x the frames costs Mirasol at most 4.5x the time and memory."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from mirasol.benchmark.timing import device_label, median_ms, peak_mib
from mirasol.data.tokenizer import ByteTokenizer
from mirasol.model import Mirasol, MirasolConfig, chunk_layout, preset
from mirasol.model.baseline import FlatBaseline


@dataclass
class ScalingRow:
    model: str
    mode: str                 # "fwd" or "fwd+bwd"
    frames: int
    chunks: int
    median_ms: float
    peak_mib: float | None
    ratio: float | None = None      # time / the same model and mode's time at fewer frames
    mem_ratio: float | None = None  # peak / the same model and mode's peak at fewer frames
    meets_target: bool | None = None  # Mirasol at more frames: both ratios <= target


@dataclass
class ScalingTable:
    title: str
    device_name: str
    frames: tuple[int, int]
    target: float
    params: dict[str, int]    # model -> parameter count
    config: dict
    rows: list[ScalingRow] = field(default_factory=list)


def _qa_inputs(config: MirasolConfig, frames: int, device: str) -> dict[str, Tensor | None]:
    """Batch-1 keyword arguments for either model's forward: random frames in [0, 1]
    (1, frames, C, H, W), random audio in [-1, 1] covering exactly their duration, and one
    short question-answer text with its answer mask."""
    gen = torch.Generator().manual_seed(frames)
    v, a = config.video, config.audio
    inputs = {"video": torch.rand(1, frames, v.channels, v.image_size, v.image_size,
                                  generator=gen), "audio": None}
    if a is not None:
        samples = chunk_layout(frames, config.frames_per_chunk, config.fps,
                               a.sample_rate).required_samples
        inputs["audio"] = torch.rand(1, samples, generator=gen) * 2 - 1
    tokenizer = ByteTokenizer()
    ids, mask = tokenizer.example("What is the dog doing?", "Catching a red ball.")
    inputs["text"], inputs["text_lengths"], inputs["answer_mask"] = tokenizer.pad([ids], [mask])
    return {name: t if t is None else t.to(device) for name, t in inputs.items()}


def _model_call(model: torch.nn.Module, batch: dict[str, Tensor], backward: bool) -> None:
    if backward:
        model(**batch).loss.backward()
        # In place: the gradient buffers persist (after the warm-up), so the peak counts
        # activations, not a parameter-sized constant that would flatten the ratios.
        model.zero_grad(set_to_none=False)
    else:
        with torch.no_grad():
            model(**batch)


def scaling(config: MirasolConfig | None = None, *, frames: tuple[int, int] = (128, 512),
            reps: int = 5, warmup: int = 1, device: str = "cpu", target: float = 4.5,
            progress: Callable[[str], None] | None = None) -> ScalingTable:
    """Mirasol (``config``, default the ``small`` preset) and the :class:`FlatBaseline` of
    the same config, each at ``frames`` = (fewer, more) frames (multiples of
    ``frames_per_chunk``), batch 1, float32, forward (no grad) and forward+backward of the
    loss (Mirasol's includes its latent loss). One model per kind serves both lengths.
    Ratios are the cost at more frames over the same model and mode's at fewer frames;
    Mirasol meets the target when both of its ratios at more frames are <= ``target``."""
    config = preset("small") if config is None else config
    torch.manual_seed(0)
    baseline = FlatBaseline(config).to(device)
    models = {"mirasol": Mirasol(config).to(device), "flat baseline": baseline}
    inputs = {f: _qa_inputs(config, f, device) for f in frames}
    chunks = [f // config.frames_per_chunk for f in frames]
    card = device_label(device)
    table = ScalingTable(
        f"scaling with clip length: {frames[0]} vs {frames[1]} frames ({chunks[0]} vs "
        f"{chunks[1]} chunks of {config.frames_per_chunk}, {baseline.tokens_per_chunk} A/V "
        f"tokens each), dim {config.dim}, batch 1, float32 on {card}",
        card, frames, target,
        {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        config.to_dict())
    for mode in ("fwd", "fwd+bwd"):
        for name, model in models.items():
            rows = []
            for f, t in zip(frames, chunks):
                if progress:
                    progress(f"{mode:8s} {name}, {f} frames")
                call = functools.partial(_model_call, model, inputs[f], mode == "fwd+bwd")
                rows.append(ScalingRow(name, mode, f, t, median_ms(call, device, reps, warmup),
                                       peak_mib(call, device)))
            model.zero_grad(set_to_none=True)
            few, many = rows
            for row in rows:
                row.ratio = row.median_ms / few.median_ms
                if row.peak_mib is not None and few.peak_mib:
                    row.mem_ratio = row.peak_mib / few.peak_mib
            if name == "mirasol":
                many.meets_target = many.ratio <= target and (many.mem_ratio is None
                                                              or many.mem_ratio <= target)
            table.rows.extend(rows)
    return table

