"""Time-aligned partitioning of a video and its audio into T chunks.

Chunk t holds frames [t·fpc, (t+1)·fpc), i.e. the time span [t·fpc/fps, (t+1)·fpc/fps), and
the audio samples of that span. Every audio window has the same length
``samples_per_chunk = ceil(fpc·sr/fps)`` so the audio encoder sees one shape; window t
starts at ``floor(t·fpc·sr/fps)``, computed in exact rational arithmetic from absolute time,
so starts never drift however many chunks there are. When fpc·sr/fps is not an integer,
adjacent windows overlap by one sample at most.

A float ``fps`` is read as the nearest fraction with denominator <= ``FPS_MAX_DENOMINATOR``
= 1001 (:func:`frame_rate`): 29.97 means 2997/100 and 30000/1001 (NTSC, as a float) means
exactly that; pass a :class:`fractions.Fraction` to choose the rate.

The frame count must be a multiple of ``frames_per_chunk``: we raise rather than pad,
since what to do with a partial chunk (drop the frames, repeat the last one, pad with
zeros) is the caller's choice. Audio past the video's end is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor


# NTSC rates are n·1000/1001 frames per second: the smallest bound that reads each of them,
# given as a float, exactly.
FPS_MAX_DENOMINATOR = 1001


@dataclass(frozen=True)
class ChunkLayout:
    """Where each chunk's frames and audio lie. Chunk t's audio is samples
    ``[audio_starts[t], audio_starts[t] + samples_per_chunk)``, all of them below
    ``required_samples`` = ceil(num_frames·sr/fps), the video's duration in samples."""

    num_chunks: int
    frames_per_chunk: int
    samples_per_chunk: int
    audio_starts: tuple[int, ...]
    required_samples: int


def _num_chunks(num_frames: int, frames_per_chunk: int) -> int:
    if frames_per_chunk <= 0:
        raise ValueError(f"frames_per_chunk must be positive; got {frames_per_chunk}")
    if num_frames <= 0:
        raise ValueError(f"need at least one chunk of frames; got num_frames={num_frames}")
    if num_frames % frames_per_chunk:
        raise ValueError(f"num_frames={num_frames} is not a multiple of "
                         f"frames_per_chunk={frames_per_chunk}; trim or pad the frames "
                         f"to {num_frames // frames_per_chunk * frames_per_chunk} or "
                         f"{-(-num_frames // frames_per_chunk) * frames_per_chunk}")
    return num_frames // frames_per_chunk


def frame_rate(fps: float | Fraction) -> Fraction:
    """``fps`` as an exact rate: an int or Fraction as given, a float as the nearest fraction
    with denominator <= ``FPS_MAX_DENOMINATOR``. ValueError for a non-finite float."""
    if isinstance(fps, (int, Fraction)):
        return Fraction(fps)
    if not math.isfinite(fps):
        raise ValueError(f"fps must be finite; got {fps}")
    return Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)


@torch.compiler.assume_constant_result
def _rate(fps: float | Fraction) -> tuple[int, int]:
    """fps as (numerator, denominator). Kept out of torch.compile's trace (fps is a
    constant of the model), so the rest is integer arithmetic that traces."""
    rate = frame_rate(fps)
    return rate.numerator, rate.denominator


def chunk_layout(num_frames: int, frames_per_chunk: int, fps: float | Fraction,
                 sample_rate: int, *, first_chunk: int = 0) -> ChunkLayout:
    """The layout of ``num_frames`` frames (a positive multiple of ``frames_per_chunk``)
    at ``fps`` with audio at ``sample_rate``; see the module docstring. ``first_chunk``:
    the frames are chunks ``first_chunk, ...`` of a longer stream (a stream's push), and
    ``audio_starts`` and ``required_samples`` are absolute sample indices in that stream's
    audio, from its time 0, so windows never drift however long the stream runs."""
    num, den = _rate(fps)
    if num <= 0 or frames_per_chunk <= 0 or sample_rate <= 0:
        raise ValueError("fps, frames_per_chunk and sample_rate must be positive; got "
                         f"fps={fps}, frames_per_chunk={frames_per_chunk}, "
                         f"sample_rate={sample_rate}")
    num_chunks = _num_chunks(num_frames, frames_per_chunk)
    if isinstance(first_chunk, bool) or not isinstance(first_chunk, int) or first_chunk < 0:
        raise ValueError(f"first_chunk must be a non-negative int; got {first_chunk!r}")
    # A chunk lasts frames_per_chunk * sample_rate * den / num samples: exact in integers.
    chunk = frames_per_chunk * sample_rate * den
    end_frame = first_chunk * frames_per_chunk + num_frames
    return ChunkLayout(
        num_chunks=num_chunks,
        frames_per_chunk=frames_per_chunk,
        samples_per_chunk=-(-chunk // num),
        audio_starts=tuple(t * chunk // num
                           for t in range(first_chunk, first_chunk + num_chunks)),
        required_samples=-(-end_frame * sample_rate * den // num),
    )


def partition_audio(audio: Tensor, num_frames: int, *, frames_per_chunk: int,
                    fps: float | Fraction, sample_rate: int) -> Tensor:
    """audio (B, S) of a ``num_frames``-frame video, S >= ``chunk_layout(...).required_samples``
    → (B, T, samples_per_chunk), a gathered copy (windows can overlap)."""
    layout = chunk_layout(num_frames, frames_per_chunk, fps, sample_rate)
    if audio.ndim != 2:
        raise ValueError(f"audio must be 2-D (B, S); got shape {tuple(audio.shape)}")
    if audio.shape[1] < layout.required_samples:
        raise ValueError(f"audio has {audio.shape[1]} samples but {num_frames} frames at "
                         f"fps={fps} need {layout.required_samples} samples at "
                         f"sample_rate={sample_rate}")
    starts = torch.tensor(layout.audio_starts, device=audio.device)
    index = starts[:, None] + torch.arange(layout.samples_per_chunk, device=audio.device)
    return audio[:, index]


def partition(video: Tensor, audio: Tensor | None, *, frames_per_chunk: int,
              fps: float | Fraction | None = None, sample_rate: int | None = None
              ) -> tuple[Tensor, Tensor | None]:
    """video (B, F, C, H, W) → (B, T, frames_per_chunk, C, H, W), a view of ``video``;
    audio (B, S) → :func:`partition_audio`'s (B, T, samples_per_chunk), or None when
    ``audio`` is None (``fps`` and ``sample_rate`` are needed only with audio)."""
    if video.ndim != 5:
        raise ValueError(f"video must be 5-D (B, F, C, H, W); got shape {tuple(video.shape)}")
    batch, num_frames = video.shape[:2]
    chunks = video.unflatten(1, (_num_chunks(num_frames, frames_per_chunk), frames_per_chunk))
    if audio is None:
        return chunks, None
    if audio.ndim == 2 and audio.shape[0] != batch:
        raise ValueError(f"audio has batch size {audio.shape[0]} but video has {batch}")
    if fps is None or sample_rate is None:
        raise ValueError("partition: audio needs fps and sample_rate")
    return chunks, partition_audio(audio, num_frames, frames_per_chunk=frames_per_chunk,
                                   fps=fps, sample_rate=sample_rate)
