"""Procedural, time-aligned audio-video question answering whose answers need *both*
modalities.

A clip is ``num_chunks`` chunks of ``frames_per_chunk`` frames at ``fps``, laid out as the
model cuts it (:func:`~mirasol.model.partition.chunk_layout`). Exactly ``len(COLOURS)`` = 4
chunks are *active*: all of them at the default ``num_chunks=4``; for longer clips a random
subset, the other chunks being a blank screen and silence in both modalities. Active chunk t
shows one shape of colour c_t moving in a straight line across a dark, slightly noisy frame,
and plays one tone of pitch p_t over exactly that chunk's audio window (raised-cosine fades
at its edges, so no clicks). (c_t) and (p_t) are two independent, uniformly random
permutations of ``COLOURS`` and ``PITCHES`` over the active chunks. Questions
(``QUESTION_KINDS``, drawn uniformly from ``SyntheticConfig.kinds``), each answered by one
word of ``ANSWERS[kind]``:

- ``colour_during_tone``: "colour during {pitch} tone?" (what colour is the shape while
  that tone plays)
- ``tone_during_colour``: "tone during {colour}?" (which tone plays while that colour is
  shown)
- ``coincide``: "{colour} during {pitch} tone?" (are they shown together) → yes / no,
  each with probability 1/2 ("no" pairs the pitch with one of the 3 other colours).

No single modality answers above chance (1/4; 1/2 for ``coincide``). Write σ = t ↦ c_t
and π = t ↦ p_t; the asked pitch or colour is drawn independently of both. A
``colour_during_tone`` answer is σ(π⁻¹(p)): the video alone fixes σ but not π⁻¹(p), which
is uniform over the active chunks because π is uniform and independent of σ, so the answer
is uniform over the 4 colours; the audio alone fixes π⁻¹(p) but σ is uniform, so again it
is; the question text alone knows neither. ``tone_during_colour`` is the mirror image.
For ``coincide`` the true pairing σ(π⁻¹(p)) is uniform over the colours given either
modality alone, so a question (c, p) and that modality come with "yes" with probability
1/4·1/2·1/4 and with "no" with probability 1/4·1/2·(3/4·1/3), the same. Shape kind
(square or disc, never asked), motion, amplitude, phase and noise come from a random stream
separate from the events, and the set of active chunks, seen by both modalities, says
nothing about either permutation. (Relational questions such as "the colour after the low
tone" would leak: their answer is never the first chunk's colour, which video sees.)

That same guarantee means no feature of one modality alone correlates with a
``QUESTION_KINDS`` answer, so a model gets no first-order gradient until it both perceives
and binds, and may sit at chance for a while. ``AUXILIARY_KINDS``, never drawn unless put
in ``kinds``, are single-modality questions for a curriculum that trains perception first
(report them apart: they are answerable from one modality by design):

- ``colour_at``: "{ordinal} colour?" (video alone answers it)
- ``tone_at``: "{ordinal} tone?" (audio alone answers it)

with the ordinal (first to fourth) counting active chunks.

Example ``index`` of ``split`` is a pure function of (seed, split, index): its generators
come from ``SeedSequence((seed, split index, index))``, so the splits draw from disjoint
streams. The discrete events (2 permutations and a question: a few thousand combinations)
do recur across splits; the rendering (positions, shapes, amplitudes, noise) does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mirasol.data.tokenizer import ByteTokenizer
from mirasol.model.config import MirasolConfig
from mirasol.model.partition import chunk_layout

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.1, 0.1), "green": (0.1, 0.85, 0.15), "blue": (0.15, 0.3, 1.0),
    "yellow": (0.95, 0.9, 0.1)}
PITCHES: dict[str, float] = {"low": 300.0, "mid": 600.0, "high": 1200.0, "top": 2400.0}
SHAPES = ("square", "disc")
SPLITS = ("train", "val", "test")
QUESTION_KINDS = ("colour_during_tone", "tone_during_colour", "coincide")
AUXILIARY_KINDS = ("colour_at", "tone_at")
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour_during_tone": tuple(COLOURS), "tone_during_colour": tuple(PITCHES),
    "coincide": ("yes", "no"), "colour_at": tuple(COLOURS), "tone_at": tuple(PITCHES)}
ABLATIONS = ("full", "text-only", "video-only", "audio-only")

_BACKGROUND = 0.08
_COLOUR_NAMES, _PITCH_NAMES = tuple(COLOURS), tuple(PITCHES)
_ORDINALS = ("first", "second", "third", "fourth")


@dataclass(frozen=True)
class SyntheticConfig:
    """Clip geometry (``num_chunks`` >= 4 chunks of ``frames_per_chunk`` frames at ``fps``,
    ``image_size``² frames, mono audio at ``sample_rate``), the shape's size in pixels (side
    or diameter), the standard deviations of the (uniform) pixel and sample noise, the tone
    fades' length in seconds, and the question kinds to draw from."""

    num_chunks: int = 4
    frames_per_chunk: int = 4
    fps: float = 4.0
    image_size: int = 32
    sample_rate: int = 8000
    shape_size: float = 8.0
    video_noise: float = 0.02
    audio_noise: float = 0.01
    fade_s: float = 0.02
    kinds: tuple[str, ...] = QUESTION_KINDS

    def __post_init__(self):
        if self.num_chunks < len(COLOURS):
            raise ValueError(f"num_chunks must be at least {len(COLOURS)} (one chunk per colour "
                             f"and pitch); got {self.num_chunks}")
        if not self.kinds or not set(self.kinds) <= set(ANSWERS):
            raise ValueError(f"kinds must be a non-empty subset of {tuple(ANSWERS)}; "
                             f"got {self.kinds}")
        if not 0 < self.shape_size < self.image_size:
            raise ValueError(f"shape_size must lie in (0, image_size={self.image_size}); "
                             f"got {self.shape_size}")
        if max(PITCHES.values()) >= self.sample_rate / 2:
            raise ValueError(f"sample_rate {self.sample_rate} cannot carry the "
                             f"{max(PITCHES.values())} Hz tone")

    @property
    def num_frames(self) -> int:
        return self.num_chunks * self.frames_per_chunk

    @classmethod
    def for_model(cls, config: MirasolConfig, num_chunks: int = 4, **changes
                  ) -> SyntheticConfig:
        """Clips in ``config``'s format (fps, frames per chunk, image size, sample rate)."""
        if config.audio is None:
            raise ValueError("the synthetic task needs audio; config.audio is None")
        return cls(num_chunks=num_chunks, frames_per_chunk=config.frames_per_chunk,
                   fps=config.fps, image_size=config.video.image_size,
                   sample_rate=config.audio.sample_rate, **changes)


@dataclass
class Example:
    """video float32 (F, 3, H, W) in [0, 1]; audio float32 (S,) in [-1, 1] with S =
    ``chunk_layout(...).required_samples``; the question, its one-word answer and kind;
    ``events``: per chunk (None where blank) "colours", "pitches", "shapes", and "chunk",
    the chunk the question is about."""

    video: Tensor
    audio: Tensor
    question: str
    answer: str
    kind: str
    events: dict


def _generators(seed: int, split: str, index: int
                ) -> tuple[np.random.Generator, np.random.Generator]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if index < 0:
        raise ValueError(f"index must be non-negative; got {index}")
    events, render = np.random.SeedSequence((seed, SPLITS.index(split), index)).spawn(2)
    return np.random.default_rng(events), np.random.default_rng(render)


def _events(config: SyntheticConfig, rng: np.random.Generator) -> dict:
    n = len(COLOURS)
    active = np.sort(rng.choice(config.num_chunks, n, replace=False))
    colours: list[str | None] = [None] * config.num_chunks
    pitches: list[str | None] = [None] * config.num_chunks
    for t, c, p in zip(active, rng.permutation(n), rng.permutation(n)):
        colours[t], pitches[t] = _COLOUR_NAMES[c], _PITCH_NAMES[p]
    kind = config.kinds[rng.integers(len(config.kinds))]
    if kind in AUXILIARY_KINDS:
        k = rng.integers(n)
        chunk = active[k]
        if kind == "colour_at":
            question, answer = f"{_ORDINALS[k]} colour?", colours[chunk]
        else:
            question, answer = f"{_ORDINALS[k]} tone?", pitches[chunk]
    elif kind == "tone_during_colour":
        colour = _COLOUR_NAMES[rng.integers(n)]
        chunk = colours.index(colour)
        question = f"tone during {colour}?"
        answer = pitches[chunk]
    else:
        pitch = _PITCH_NAMES[rng.integers(n)]
        chunk = pitches.index(pitch)
        if kind == "colour_during_tone":
            question = f"colour during {pitch} tone?"
            answer = colours[chunk]
        else:
            answer = ANSWERS["coincide"][rng.integers(2)]
            others = [c for c in COLOURS if c != colours[chunk]]
            colour = colours[chunk] if answer == "yes" else others[rng.integers(n - 1)]
            question = f"{colour} during {pitch} tone?"
    return {"kind": kind, "question": question, "answer": answer, "chunk": int(chunk),
            "colours": colours, "pitches": pitches}


def make_events(config: SyntheticConfig, seed: int, split: str, index: int) -> dict:
    """The discrete content of example ``index`` (what :func:`make_example` renders), without
    rendering: "kind", "question", "answer", "chunk", and per chunk "colours" and
    "pitches" (None where blank)."""
    return _events(config, _generators(seed, split, index)[0])


def _noise(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    # Uniform rather than Gaussian: drawing it is 4-5x faster, and the shape of the noise
    # does not matter here.
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(std * 12 ** 0.5)


def _video(config: SyntheticConfig, colours: list[str | None], rng: np.random.Generator
           ) -> tuple[np.ndarray, list[str | None]]:
    fpc, size, half = config.frames_per_chunk, config.image_size, config.shape_size / 2
    active = [t for t, c in enumerate(colours) if c is not None]
    # Start and end centres inside the frame, so the whole shape stays visible.
    ends = rng.uniform(half, size - half, (len(active), 2, 2))
    shape = rng.integers(len(SHAPES), size=len(active))
    square = np.repeat(shape == SHAPES.index("square"), fpc)[:, None, None]
    step = np.linspace(0.0, 1.0, fpc)[None, :, None]
    centres = (ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * step).reshape(-1, 1, 1, 2)
    grid = np.arange(size) + 0.5
    dy = np.abs(grid[None, :, None] - centres[..., 0])
    dx = np.abs(grid[None, None, :] - centres[..., 1])
    dist = np.where(square, np.maximum(dx, dy), np.hypot(dx, dy))
    alpha = np.zeros((config.num_frames, 1, size, size), np.float32)
    frames = (np.asarray(active)[:, None] * fpc + np.arange(fpc)).reshape(-1)
    # One pixel of linear falloff anti-aliases the edge as the shape moves sub-pixel.
    alpha[frames, 0] = np.clip(half + 0.5 - dist, 0.0, 1.0)
    colour = np.zeros((config.num_frames, 3, 1, 1), np.float32)
    colour[frames, :, 0, 0] = np.repeat([COLOURS[colours[t]] for t in active], fpc, axis=0)
    video = _BACKGROUND + alpha * (colour - _BACKGROUND)
    video += _noise(rng, video.shape, config.video_noise)
    shapes: list[str | None] = [None] * len(colours)
    for t, k in zip(active, shape):
        shapes[t] = SHAPES[k]
    return np.clip(video, 0.0, 1.0, out=video), shapes


def _audio(config: SyntheticConfig, pitches: list[str | None], rng: np.random.Generator
           ) -> np.ndarray:
    layout = chunk_layout(config.num_frames, config.frames_per_chunk, config.fps,
                          config.sample_rate)
    n = np.arange(layout.samples_per_chunk)
    fade = max(1.0, config.fade_s * config.sample_rate)
    edge = np.minimum(n + 0.5, layout.samples_per_chunk - n - 0.5)
    envelope = np.sin(np.pi / 2 * np.clip(edge / fade, 0.0, 1.0)) ** 2
    active = [t for t, p in enumerate(pitches) if p is not None]
    freqs = np.array([PITCHES[pitches[t]] for t in active])[:, None]
    amps = rng.uniform(0.3, 0.8, (len(active), 1))
    phases = rng.uniform(0.0, 2 * np.pi, (len(active), 1))
    # float32 sin is several times faster; its ~1e-3 rad phase error is inaudible.
    angles = (2 * np.pi * freqs / config.sample_rate * n + phases).astype(np.float32)
    tones = (amps * envelope).astype(np.float32) * np.sin(angles)
    audio = _noise(rng, layout.required_samples, config.audio_noise)
    for t, tone in zip(active, tones):
        start = layout.audio_starts[t]
        audio[start:start + layout.samples_per_chunk] += tone
    return np.clip(audio, -1.0, 1.0, out=audio)


def make_example(config: SyntheticConfig, seed: int, split: str, index: int) -> Example:
    """Example ``index`` (>= 0) of ``split`` (one of ``SPLITS``): a pure function of its
    arguments."""
    events_rng, render_rng = _generators(seed, split, index)
    events = _events(config, events_rng)
    video, shapes = _video(config, events["colours"], render_rng)
    audio = _audio(config, events["pitches"], render_rng)
    return Example(video=torch.from_numpy(video), audio=torch.from_numpy(audio),
                   question=events.pop("question"), answer=events.pop("answer"),
                   kind=events.pop("kind"), events={**events, "shapes": shapes})


class SyntheticAVQA(torch.utils.data.Dataset):
    """``size`` examples of ``split``, generated on access by :func:`make_example`."""

    def __init__(self, config: SyntheticConfig, split: str, size: int, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        self.config, self.split, self.size, self.seed = config, split, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        return make_example(self.config, self.seed, self.split, int(index))


def collate(examples: list[Example], tokenizer: ByteTokenizer | None = None) -> dict:
    """A model batch: "video" (B, F, 3, H, W), "audio" (B, S); "text" (B, L) int64 =
    ``[BOS] question [SEP] answer [EOS]`` right-padded, "text_lengths" (B,), "answer_mask"
    (B, L) bool, True on the answer bytes and EOS; "prompt" (B, P) = ``[BOS] question
    [SEP]`` right-padded, "prompt_lengths" (B,); "answers" and "kinds", lists of str."""
    tok = tokenizer or ByteTokenizer()
    sequences, masks = zip(*(tok.example(e.question, e.answer) for e in examples))
    text, text_lengths, answer_mask = tok.pad(list(sequences), list(masks))
    prompt, prompt_lengths = tok.pad([tok.prompt(e.question) for e in examples])
    return {"video": torch.stack([e.video for e in examples]),
            "audio": torch.stack([e.audio for e in examples]),
            "text": text, "text_lengths": text_lengths, "answer_mask": answer_mask,
            "prompt": prompt, "prompt_lengths": prompt_lengths,
            "answers": [e.answer for e in examples], "kinds": [e.kind for e in examples]}


def ablate(batch: dict, mode: str) -> dict:
    """A shallow copy of ``batch`` keeping only the modalities ``mode`` names (one of
    ``ABLATIONS``; the question text is always kept): a removed video or audio becomes
    zeros of the same shape, so one architecture trains and evaluates on every mode."""
    if mode not in ABLATIONS:
        raise ValueError(f"mode must be one of {ABLATIONS}; got {mode!r}")
    out = dict(batch)
    if mode in ("audio-only", "text-only"):
        out["video"] = torch.zeros_like(batch["video"])
    if mode in ("video-only", "text-only"):
        out["audio"] = torch.zeros_like(batch["audio"])
    return out
