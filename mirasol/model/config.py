"""Mirasol3B configuration: one frozen dataclass per component, the presets, JSON.

Nothing in a config depends on the clip's length: the number of chunks T comes from the
input (frames / ``frames_per_chunk``), so one model serves 128 or 512 frames with the
same parameters.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMBINERS = ("transformer", "ttm")


def _check_heads(name: str, width: int, num_heads: int) -> None:
    if width % num_heads:
        raise ValueError(f"{name}.width ({width}) must be divisible by {name}.num_heads "
                         f"({num_heads})")


@dataclass(frozen=True)
class _ViTConfig:
    """The transformer of a per-chunk encoder; ``encoder=False`` builds none (the model
    then takes precomputed features of width ``width``)."""

    width: int = 64
    depth: int = 1
    num_heads: int = 2
    mlp_ratio: float = 4.0
    encoder: bool = True


@dataclass(frozen=True)
class VideoConfig(_ViTConfig):
    """Tubelet ViT over one chunk's frames: (tubelet_size × patch_size × patch_size)
    patches of ``image_size``² RGB frames. ``encoder=False`` builds no ViT: the model then
    takes precomputed ``video_features`` of width ``width``."""

    image_size: int = 32
    patch_size: int = 8
    tubelet_size: int = 2
    channels: int = 3

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"video.image_size ({self.image_size}) must be divisible by "
                             f"video.patch_size ({self.patch_size})")
        _check_heads("video", self.width, self.num_heads)


@dataclass(frozen=True)
class AudioConfig(_ViTConfig):
    """Log-mel spectrogram (``n_mels`` bins, ``n_fft``/``hop_length`` STFT at
    ``sample_rate``) of one chunk's waveform, cut into ``patch_size``² patches for a ViT.
    ``encoder=False``: precomputed ``audio_features`` of width ``width`` instead."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 160
    n_mels: int = 32
    patch_size: int = 8

    def __post_init__(self):
        if self.n_mels % self.patch_size:
            raise ValueError(f"audio.n_mels ({self.n_mels}) must be divisible by "
                             f"audio.patch_size ({self.patch_size})")
        _check_heads("audio", self.width, self.num_heads)


@dataclass(frozen=True)
class CombinerConfig:
    """``kind``: "transformer" (per-chunk transformer, m learned output tokens) or "ttm"
    (Token Turing Machine: ``memory_size`` memory tokens carried across chunks, TokenLearner
    read/write with ``bottleneck_dim``). Both output ``num_tokens`` (m) tokens per chunk."""

    kind: str = "transformer"
    num_tokens: int = 8
    depth: int = 1
    num_heads: int = 2
    memory_size: int = 16
    bottleneck_dim: int = 64

    def __post_init__(self):
        if self.kind not in COMBINERS:
            raise ValueError(f"combiner.kind must be one of {COMBINERS}, got {self.kind!r}")


@dataclass(frozen=True)
class TextConfig:
    """Causal text decoder; layers ``i`` with ``i % cross_attention_every == 0``
    cross-attend to the A/V latents (1: every layer)."""

    vocab_size: int = 260
    width: int = 64
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0
    cross_attention_every: int = 1

    def __post_init__(self):
        _check_heads("text", self.width, self.num_heads)
        if self.cross_attention_every < 1:
            raise ValueError("text.cross_attention_every must be at least 1, got "
                             f"{self.cross_attention_every}")


@dataclass(frozen=True)
class MirasolConfig:
    """The whole model. ``fps`` and ``frames_per_chunk`` fix a chunk's time span (and with
    ``audio.sample_rate`` its audio window); ``dim``/``depth``/``num_heads`` are the
    Combiner's and the A/V autoregressive model's width and the latter's depth.
    ``audio=None``: a video-only model. ``latent_loss_weight`` scales the latent
    prediction loss against the language-model loss.

    ``window_chunks`` bounds the model for streaming (None: the paper's unbounded model): a
    chunk's A/V latents see its own chunk and the ``window_chunks - 1`` before it, plus the
    first ``sink_chunks`` chunks (attention sinks), and the text decoder reads the latents
    of the last ``window_chunks`` chunks plus the sinks. Training and the whole-clip
    forward honour the same window, so a model trained with one streams exactly what it
    was trained on (:meth:`Mirasol.stream`).

    ``time_embedding``: each chunk's combined tokens get a sinusoidal embedding of the
    chunk's absolute index, so the latents say *when*. False: time enters only as the A/V
    attention's rotary (relative) positions, and a windowed model computes the same
    function of its window at chunk 10 and at chunk 10⁶: the choice for a model that
    streams past the clip lengths it was trained on."""

    fps: float = 4.0
    frames_per_chunk: int = 4
    dim: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 4.0
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig | None = field(default_factory=AudioConfig)
    combiner: CombinerConfig = field(default_factory=CombinerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    latent_loss_weight: float = 1.0
    window_chunks: int | None = None
    sink_chunks: int = 0
    time_embedding: bool = True

    def __post_init__(self):
        _check_heads("mirasol", self.dim, self.num_heads)
        if self.window_chunks is not None and (isinstance(self.window_chunks, bool) or not
                                               isinstance(self.window_chunks, int)
                                               or self.window_chunks < 1):
            raise ValueError("window_chunks must be a positive int or None, got "
                             f"{self.window_chunks!r}")
        if (isinstance(self.sink_chunks, bool) or not isinstance(self.sink_chunks, int)
                or self.sink_chunks < 0):
            raise ValueError(f"sink_chunks must be a non-negative int, got {self.sink_chunks!r}")
        if self.sink_chunks and self.window_chunks is None:
            raise ValueError(f"sink_chunks ({self.sink_chunks}) needs window_chunks: without a "
                             "window every chunk is visible already")
        if self.frames_per_chunk % self.video.tubelet_size:
            raise ValueError(f"frames_per_chunk ({self.frames_per_chunk}) must be a multiple "
                             f"of video.tubelet_size ({self.video.tubelet_size})")

    def replace(self, **changes: Any) -> MirasolConfig:
        """A copy with top-level fields changed; a dict for a component updates its fields
        (``replace(text={"depth": 4})``), ``audio=None`` drops audio."""
        for name, value in changes.items():
            if isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MirasolConfig:
        data = dict(data)
        parts = {"video": VideoConfig, "audio": AudioConfig, "combiner": CombinerConfig,
                 "text": TextConfig}
        for name, part in parts.items():
            if data.get(name) is not None:
                data[name] = part(**data[name])
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown MirasolConfig fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MirasolConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _preset(fps, frames_per_chunk, dim, depth, num_heads, video, audio, combiner, text):
    return MirasolConfig(fps=fps, frames_per_chunk=frames_per_chunk, dim=dim, depth=depth,
                         num_heads=num_heads, video=VideoConfig(**video),
                         audio=AudioConfig(**audio), combiner=CombinerConfig(**combiner),
                         text=TextConfig(**text))


PRESETS: dict[str, MirasolConfig] = {
    # Trains on a CPU in minutes: 32² frames, 1-second chunks of 4 frames at 4 fps.
    "tiny": MirasolConfig(),
    # The scaling benchmark's model: 64² frames, 4-second chunks of 32 frames at 8 fps
    # (128 frames = 4 chunks, 512 frames = 16 chunks), 16 kHz audio.
    "small": _preset(
        8.0, 32, 256, 4, 4,
        video=dict(image_size=64, patch_size=16, tubelet_size=4, width=256, depth=4,
                   num_heads=4),
        audio=dict(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64, patch_size=16,
                   width=256, depth=2, num_heads=4),
        combiner=dict(num_tokens=16, depth=2, num_heads=4, memory_size=32),
        text=dict(width=256, depth=4, num_heads=4, cross_attention_every=2)),
    # ViT-B sized encoders, A/V model and decoder.
    "base": _preset(
        8.0, 16, 768, 12, 12,
        video=dict(image_size=224, patch_size=16, tubelet_size=2, width=768, depth=12,
                   num_heads=12),
        audio=dict(sample_rate=16000, n_fft=400, hop_length=160, n_mels=128, patch_size=16,
                   width=768, depth=12, num_heads=12),
        combiner=dict(num_tokens=32, depth=2, num_heads=12, memory_size=64,
                      bottleneck_dim=128),
        text=dict(width=768, depth=12, num_heads=12, cross_attention_every=2)),
    # About 3.0B parameters (2.9B without audio), more than half in the A/V part:
    # ViT-L video encoder, ViT-B audio encoder, 2048-wide Combiner and A/V model,
    # 2048-wide decoder cross-attending every other layer.
    "mirasol3b": _preset(
        8.0, 16, 2048, 24, 16,
        video=dict(image_size=224, patch_size=16, tubelet_size=2, width=1024, depth=24,
                   num_heads=16),
        audio=dict(sample_rate=16000, n_fft=400, hop_length=160, n_mels=128, patch_size=16,
                   width=768, depth=12, num_heads=12),
        combiner=dict(num_tokens=32, depth=2, num_heads=16, memory_size=64,
                      bottleneck_dim=256),
        text=dict(width=2048, depth=22, num_heads=16, cross_attention_every=2)),
}


def preset(name: str, **changes: Any) -> MirasolConfig:
    """A preset by name (``tiny``, ``small``, ``base``, ``mirasol3b``), with
    :meth:`MirasolConfig.replace` changes applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
