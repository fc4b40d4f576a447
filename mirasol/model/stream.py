"""Live Mirasol: a clip that arrives as it plays, pushed chunk by chunk, asked about at any
moment, in memory bounded by the model's window.

Why streaming is exact. Mirasol3B is causal over time chunks: the encoders see one chunk,
the Combiner one chunk (the TTM Combiner a memory carried from the chunk before), the A/V
model chunk t and earlier chunks only — with ``window_chunks`` W only chunks ``t - W + 1 ..
t`` and the first ``sink_chunks`` S. A push therefore runs the encoders and the Combiner on
the new chunks alone (the Combiner's state carried), and the A/V model on the new chunks
against each block's rolling key/value cache (:class:`~mirasol.layers.ChunkKVCache`,
RoPE and the time embedding at absolute positions), which holds exactly the keys the
whole-clip forward would let them see. The text decoder reads the latents of the last W
chunks and the S sinks (:meth:`Mirasol.visible_chunks`), which the stream keeps. So a clip
pushed one chunk at a time, or k at a time, gives the whole-clip forward's latents and
answers (tests/test_stream.py), in memory that does not grow with the clip when the model
has a window: the caches' ``(ceil(S·m / m) + W - 1 + max_chunks)·m`` rows per block, W + S
chunks of latents, the Combiner's state and less than two chunks of audio.

Audio windows come from absolute time (:func:`~mirasol.model.chunk_layout` with
``first_chunk``): chunk t's window starts at sample ``floor(t · frames_per_chunk ·
sample_rate / fps)`` of the stream's audio however many pushes brought it, so nothing drifts
over hours. A push's audio is the continuation of the stream's audio, any number of samples,
as long as the stream's audio then covers the pushed frames; samples past them wait for the
next push.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mirasol.model.partition import chunk_layout, frame_rate

if TYPE_CHECKING:
    from mirasol.model.mirasol import Mirasol

STATE_FORMAT = 1


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"MirasolStream: {name} must be a positive int, got {value!r}")


class MirasolStream:
    """``batch`` live clips through one :class:`~mirasol.model.Mirasol` (build it with
    :meth:`Mirasol.stream`): :meth:`push` the next chunks, :meth:`ask` at any moment,
    :meth:`state_dict` / :meth:`save` to survive a restart, :meth:`reset` for a new clip.

    Every clip of the batch is at the same time: :attr:`chunks` chunks pushed,
    :attr:`seconds` seconds of video. Pushes run under ``torch.no_grad`` (a stream is
    inference; training runs whole clips through :meth:`Mirasol.forward` with the same
    window). Put the model in ``eval()`` mode first, as for :meth:`Mirasol.generate`.
    """

    def __init__(self, model: Mirasol, batch: int = 1, *, max_chunks: int = 1,
                 capacity_chunks: int | None = None):
        c = model.config
        _positive_int("batch", batch)
        _positive_int("max_chunks", max_chunks)
        if c.window_chunks is None:
            if capacity_chunks is None:
                raise ValueError("MirasolStream: this model has no window (window_chunks=None), "
                                 "so every chunk stays visible and the caches grow with the "
                                 "clip: give capacity_chunks (the most chunks the stream will "
                                 "reach), or stream a model with a window")
            _positive_int("capacity_chunks", capacity_chunks)
        elif capacity_chunks is not None:
            raise ValueError("MirasolStream: capacity_chunks is for a model without a window; "
                             f"this one has window_chunks={c.window_chunks}, whose caches are "
                             "sized by max_chunks")
        self.model, self.config, self.batch = model, c, batch
        self.max_chunks, self.capacity_chunks = max_chunks, capacity_chunks
        weight = next(model.parameters())
        self._caches = model.av.new_caches(batch, max_chunks=max_chunks,
                                           capacity_chunks=capacity_chunks,
                                           dtype=weight.dtype, device=weight.device)
        self._dtype, self._device = weight.dtype, weight.device
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Start a new clip (the buffers are kept)."""
        c = self.config
        for cache in self._caches:
            cache.reset()
        with torch.no_grad():
            self._state = self.model.combiner.initial_state(self.batch)
        self._latents = torch.zeros(self.batch, 0, c.combiner.num_tokens, c.dim,
                                    dtype=self._dtype, device=self._device)
        self._audio = torch.zeros(self.batch, 0, device=self._device)
        self._audio_start = 0  # stream sample index of self._audio[:, 0]
        self.chunks = 0

    @property
    def seconds(self) -> float:
        """Seconds of video pushed."""
        return float(self.chunks * self.config.frames_per_chunk / frame_rate(self.config.fps))

    @property
    def latents(self) -> Tensor:
        """(batch, T', m, dim): the latents the text decoder reads now (the sinks and the
        window's chunks; every chunk's without a window)."""
        return self._latents

    @property
    def nbytes(self) -> int:
        """Bytes of the stream's state: caches, kept latents, Combiner state, audio."""
        tensors = [self._latents, self._audio] + ([] if self._state is None else [self._state])
        return sum(cache.nbytes for cache in self._caches) + sum(
            t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> dict:
        """Everything a restarted process needs to go on (tensors copied, detached), with
        the config it was saved by."""
        clone = (lambda t: None if t is None else t.detach().clone())
        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "batch": self.batch,
                "max_chunks": self.max_chunks, "capacity_chunks": self.capacity_chunks,
                "chunks": self.chunks, "audio_start": self._audio_start,
                "audio": clone(self._audio), "combiner": clone(self._state),
                "latents": clone(self._latents),
                "caches": [cache.state_dict() for cache in self._caches]}

    def load_state_dict(self, state: dict) -> None:
        """Go on from a :meth:`state_dict` of a stream of the same config and batch (its
        caches' sizes may differ); raises, changing nothing, for any other."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("MirasolStream: not a stream state (format "
                             f"{STATE_FORMAT} expected)")
        mine = self.config.to_dict()
        if state["config"] != mine:
            differ = sorted(k for k in set(mine) | set(state["config"])
                            if mine.get(k) != state["config"].get(k))
            raise ValueError("MirasolStream: the state was saved by a stream of another "
                             f"config (fields that differ: {', '.join(differ)})")
        if state["batch"] != self.batch:
            raise ValueError(f"MirasolStream: the state holds {state['batch']} clips, this "
                             f"stream {self.batch}")
        if self.capacity_chunks is not None and state["chunks"] > self.capacity_chunks:
            raise ValueError(f"MirasolStream: the state is {state['chunks']} chunks in, past "
                             f"this stream's capacity_chunks ({self.capacity_chunks})")
        for cache, saved in zip(self._caches, state["caches"], strict=True):
            cache.load_state_dict(saved)
        move = (lambda t: None if t is None else t.to(self._device))
        self._state, self._latents = move(state["combiner"]), move(state["latents"])
        self._audio, self._audio_start = move(state["audio"]), state["audio_start"]
        self.chunks = state["chunks"]

    def save(self, path: str | Path) -> None:
        """:meth:`state_dict` to a file (``torch.save``)."""
        torch.save(self.state_dict(), path)

    def restore(self, path: str | Path) -> None:
        """:meth:`load_state_dict` from a :meth:`save` file (loaded with
        ``weights_only=True``: tensors and plain data only)."""
        self.load_state_dict(torch.load(path, map_location=self._device, weights_only=True))

    # ------------------------------------------------------------------ pushes

    @torch.no_grad()
    def push(self, video: Tensor | None = None, audio: Tensor | None = None, *,
             video_features: Tensor | None = None, audio_features: Tensor | None = None,
             fps: float | Fraction | None = None, sample_rate: int | None = None) -> Tensor:
        """The next ``k >= 1`` whole chunks of every clip: ``video`` (batch, k·fpc, C, H, W)
        frames (or ``video_features`` (batch, k, Nv, video.width)), and ``audio`` (batch, S)
        the stream's next S samples, any S that makes the stream's audio cover the pushed
        frames (or ``audio_features`` (batch, k, Na, audio.width)). ``fps`` and
        ``sample_rate``, when given, must be the config's (a decoder's rates, checked).
        Returns the new chunks' latents (batch, k, m, dim). A refused push raises before
        anything changes."""
        k = self._check_push(video, audio, video_features, audio_features, fps, sample_rate)
        model, c = self.model, self.config
        v = model._video_tokens(video, video_features)
        a = audio_features
        if audio is not None and model._takes_audio(audio, None):
            a = model.audio_encoder(self._audio_windows(audio, k))
        combined, self._state = model._combine(v, a, self._state)
        latents = model.av(combined, first_chunk=self.chunks, caches=self._caches)
        self._latents = model.visible_chunks(torch.cat((self._latents, latents), dim=1))
        self.chunks += k
        return latents

    def _layout(self, k: int):
        c = self.config
        return chunk_layout(k * c.frames_per_chunk, c.frames_per_chunk, c.fps,
                            c.audio.sample_rate, first_chunk=self.chunks)

    def _audio_windows(self, audio: Tensor, k: int) -> Tensor:
        """(batch, k, samples_per_chunk): the new chunks' windows of the stream's audio;
        keeps the samples from the next chunk's window on."""
        layout = self._layout(k)
        buffer = torch.cat((self._audio, audio.to(self._audio.dtype)), dim=1)
        starts = torch.tensor(layout.audio_starts, device=buffer.device) - self._audio_start
        windows = buffer[:, starts[:, None] + torch.arange(layout.samples_per_chunk,
                                                           device=buffer.device)]
        c = self.config
        following = chunk_layout(c.frames_per_chunk, c.frames_per_chunk, c.fps,
                                 c.audio.sample_rate, first_chunk=self.chunks + k)
        keep = following.audio_starts[0] - self._audio_start
        self._audio = buffer[:, keep:].clone()  # clone: drop the storage of what is read
        self._audio_start += keep
        return windows

    def _check_push(self, video, audio, video_features, audio_features, fps, sample_rate
                    ) -> int:
        """The chunks ``k`` of a push that can be taken now; raises otherwise."""
        c = self.config
        if fps is not None and frame_rate(fps) != frame_rate(c.fps):
            raise ValueError(f"MirasolStream: frames at {fps} fps, but the model takes "
                             f"{c.fps} fps; resample the video")
        if sample_rate is not None and (c.audio is None or sample_rate != c.audio.sample_rate):
            expected = "no audio" if c.audio is None else f"{c.audio.sample_rate} Hz"
            raise ValueError(f"MirasolStream: audio at {sample_rate} Hz, but the model takes "
                             f"{expected}")
        if (video is None) == (video_features is None):
            raise ValueError("MirasolStream.push: pass video (batch, k·frames_per_chunk, C, H, "
                             "W) or video_features (batch, k, Nv, width), one of them")
        if video is not None:
            if not isinstance(video, Tensor) or video.dim() != 5:
                raise ValueError("MirasolStream.push: video must be (batch, frames, C, H, W), "
                                 f"got {getattr(video, 'shape', type(video).__name__)}")
            frames = video.shape[1]
            if frames == 0 or frames % c.frames_per_chunk:
                raise ValueError(f"MirasolStream.push: {frames} frames is not a whole number "
                                 f"of chunks of {c.frames_per_chunk} frames; push whole chunks "
                                 "(keep the rest for the next push)")
            if self.model.video_encoder is not None:
                self.model.video_encoder.check(video)
            k = frames // c.frames_per_chunk
            batch = video.shape[0]
        else:
            if video_features.dim() != 4 or video_features.shape[1] == 0:
                raise ValueError("MirasolStream.push: video_features must be (batch, k, Nv, "
                                 f"width) with k >= 1, got {tuple(video_features.shape)}")
            k, batch = video_features.shape[1], video_features.shape[0]
        if batch != self.batch:
            raise ValueError(f"MirasolStream.push: a push of batch {batch} into a stream of "
                             f"{self.batch} clips")
        if k > self.max_chunks:
            raise ValueError(f"MirasolStream.push: {k} chunks in one push, more than "
                             f"max_chunks ({self.max_chunks}); push fewer or build the stream "
                             "with a larger max_chunks")
        if self.model._takes_audio(audio, audio_features):
            self._check_audio(audio, audio_features, k)
        tokens = k * c.combiner.num_tokens
        for cache in self._caches:
            cache.check_push(self.batch, tokens, self._device)
        return k

    def _check_audio(self, audio: Tensor | None, features: Tensor | None, k: int) -> None:
        if audio is not None and features is not None:
            raise ValueError("MirasolStream.push: pass audio or audio_features, not both")
        if features is not None:
            if features.shape[:2] != (self.batch, k):
                raise ValueError(f"MirasolStream.push: audio_features must be ({self.batch}, "
                                 f"{k}, Na, width) for {k} chunks, got {tuple(features.shape)}")
            return
        if not isinstance(audio, Tensor) or audio.dim() != 2 or audio.shape[0] != self.batch:
            raise ValueError(f"MirasolStream.push: audio must be ({self.batch}, samples), got "
                             f"{getattr(audio, 'shape', type(audio).__name__)}")
        layout = self._layout(k)
        have = self._audio_start + self._audio.shape[1] + audio.shape[1]
        if have < layout.required_samples:
            end = (self.chunks + k) * self.config.frames_per_chunk
            raise ValueError(f"MirasolStream.push: the stream's audio reaches sample {have} "
                             f"({audio.shape[1]} pushed now), but frames up to {end} need "
                             f"{layout.required_samples} at {self.config.audio.sample_rate} "
                             "Hz; push the audio that covers the frames")

    # ------------------------------------------------------------------ questions

    def generate(self, prompt: Tensor, **kwargs) -> Tensor:
        """:meth:`Mirasol.generate` on the stream's current state: answer tokens (batch,
        max_new_tokens) continuing each ``prompt`` (batch, P) (same keyword arguments)."""
        if self.chunks == 0:
            raise ValueError("MirasolStream: nothing to answer about yet: push at least one "
                             "chunk before asking")
        return self.model.generate(prompt=prompt, latents=self._latents, **kwargs)

    def ask(self, question: str | list[str], tokenizer, *, num_beams: int = 1,
            max_new_tokens: int = 16) -> list[str]:
        """Answer ``question`` (one for every clip, or a list with one per clip) about what
        has played so far: one answer per clip (greedy, or beam search with
        ``num_beams``), in the text of ``tokenizer`` (its ``prompt``, ``pad``, ``decode``,
        ``EOS`` and ``PAD``, as :class:`mirasol.data.ByteTokenizer`'s: the model does not
        know its tokenizer, as for :meth:`Mirasol.generate`)."""
        questions = [question] * self.batch if isinstance(question, str) else list(question)
        if len(questions) != self.batch:
            raise ValueError(f"MirasolStream.ask: {len(questions)} questions for "
                             f"{self.batch} clips")
        prompt, lengths = tokenizer.pad([tokenizer.prompt(q) for q in questions])
        answers = self.generate(prompt.to(self._device), prompt_lengths=lengths.to(self._device),
                                num_beams=num_beams, max_new_tokens=max_new_tokens,
                                eos_token_id=tokenizer.EOS, pad_token_id=tokenizer.PAD)
        return [tokenizer.decode(row) for row in answers]

    def __repr__(self) -> str:
        c = self.config
        return (f"MirasolStream(batch={self.batch}, chunks={self.chunks}, "
                f"seconds={self.seconds:.1f}, window_chunks={c.window_chunks}, "
                f"sink_chunks={c.sink_chunks}, max_chunks={self.max_chunks}, "
                f"nbytes={self.nbytes})")
