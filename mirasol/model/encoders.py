"""Per-chunk encoders, shared across chunks: a tubelet ViT for video and a log-mel patch
ViT for audio. Each chunk is one row of the batch (the transformer blocks attend within a
row), and position embeddings cover one chunk only, so no parameter depends on the number
of chunks."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from mirasol.layers import Block
from mirasol.model.audio import LogMelSpectrogram
from mirasol.model.config import AudioConfig, VideoConfig


class _ChunkViT(nn.Module):
    """Learned position embedding + pre-norm blocks + final norm over (rows, N, width)."""

    def __init__(self, num_tokens: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float, backend: str):
        super().__init__()
        self.position = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens + self.position
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class VideoEncoder(nn.Module):
    """(B, T, frames_per_chunk, C, H, W) frames -> (B, T, Nv, width) tokens, with
    Nv = (frames_per_chunk / tubelet) · (image_size / patch)²."""

    def __init__(self, config: VideoConfig, frames_per_chunk: int, backend: str = "auto"):
        super().__init__()
        c = config
        self.config = c
        kernel = (c.tubelet_size, c.patch_size, c.patch_size)
        self.patch = nn.Conv3d(c.channels, c.width, kernel, stride=kernel)
        grid = (frames_per_chunk // c.tubelet_size, c.image_size // c.patch_size,
                c.image_size // c.patch_size)
        self.vit = _ChunkViT(grid[0] * grid[1] * grid[2], c.width, c.depth, c.num_heads,
                             c.mlp_ratio, backend)

    def check(self, frames: Tensor) -> None:
        """Raise on frames the tubelets and position embeddings cannot take."""
        c = self.config
        *_, C, H, W = frames.shape
        if C != c.channels:
            raise ValueError(f"video: expected {c.channels} channels (B, F, C, H, W), got {C}")
        if H % c.patch_size or W % c.patch_size:
            raise ValueError(f"video: frame size {H}x{W} is not divisible by the patch size "
                             f"{c.patch_size}")
        if (H, W) != (c.image_size, c.image_size):
            raise ValueError(f"video: the model takes {c.image_size}x{c.image_size} frames "
                             f"(its position embeddings cover that patch grid), got {H}x{W}; "
                             "resize the frames")

    def forward(self, frames: Tensor) -> Tensor:
        self.check(frames)
        B, T = frames.shape[:2]
        x = self.patch(rearrange(frames, "b t f c h w -> (b t) c f h w"))
        return self.vit(rearrange(x, "n d f h w -> n (f h w) d")).unflatten(0, (B, T))


class AudioEncoder(nn.Module):
    """(B, T, samples_per_chunk) waveform windows -> (B, T, Na, width) tokens: log-mel
    spectrogram, then patch_size² patches (trailing spectrogram frames that do not fill a
    patch are dropped), Na = (n_mels / patch) · (frames // patch)."""

    # Fixed affine normalization of log-mel values (AudioSet statistics, as in AST) so the
    # patch embedding starts on unit-scale inputs.
    LOG_MEL_MEAN, LOG_MEL_STD = -4.27, 4.57

    def __init__(self, config: AudioConfig, samples_per_chunk: int, backend: str = "auto"):
        super().__init__()
        c = config
        if samples_per_chunk < c.n_fft:
            raise ValueError(f"audio: a chunk holds {samples_per_chunk} samples, fewer than "
                             f"audio.n_fft ({c.n_fft})")
        self.mel = LogMelSpectrogram(c.sample_rate, c.n_fft, c.hop_length, c.n_mels)
        frames = self.mel.num_frames(samples_per_chunk)
        if frames < c.patch_size:
            raise ValueError(f"audio: a chunk gives {frames} spectrogram frames, fewer than "
                             f"audio.patch_size ({c.patch_size})")
        self.time_patches = frames // c.patch_size
        self.patch_size = c.patch_size
        self.patch = nn.Conv2d(1, c.width, c.patch_size, stride=c.patch_size)
        self.vit = _ChunkViT(c.n_mels // c.patch_size * self.time_patches, c.width, c.depth,
                             c.num_heads, c.mlp_ratio, backend)

    def forward(self, waveform: Tensor) -> Tensor:
        B, T = waveform.shape[:2]
        spec = self.mel(waveform.flatten(0, 1))[..., :self.time_patches * self.patch_size]
        spec = (spec - self.LOG_MEL_MEAN) / self.LOG_MEL_STD
        x = self.patch(spec.unsqueeze(1))  # (B*T, width, mels/p, time/p)
        return self.vit(rearrange(x, "n d f t -> n (f t) d")).unflatten(0, (B, T))
