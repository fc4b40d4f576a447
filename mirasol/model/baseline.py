"""The scaling benchmark's comparison model: Mirasol's inputs, tokenization, text decoder and
loss around one flat transformer over every frame's tokens at once."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mirasol.layers import Block
from mirasol.model.av import chunk_time_embedding
from mirasol.model.config import MirasolConfig
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.partition import chunk_layout, partition, partition_audio
from mirasol.model.text import TextDecoder, lm_loss


class FlatBaselineOutput(NamedTuple):
    """``loss`` the LM loss, ``logits`` (B, L, vocab), ``tokens`` (B, T, N, dim) the A/V
    transformer's outputs that the decoder attends to (N = Nv + Na per chunk)."""

    loss: Tensor
    logits: Tensor
    tokens: Tensor


class FlatBaseline(nn.Module):
    """The naive way to model a long clip: one transformer over every frame's tokens.

    Tokenization is Mirasol's: the same time-aligned chunks, the same tubelet (Conv3d) and
    log-mel patch (Conv2d) embeddings with per-chunk-local learned position embeddings
    (Mirasol's :class:`VideoEncoder`/:class:`AudioEncoder` with no transformer blocks),
    projected to ``config.dim``. Where Mirasol then runs per-chunk encoders, compresses each
    chunk to m tokens (Combiner) and models those chunk-causally, the baseline puts all
    T·(Nv + Na) tokens of a sample in one sequence through ``config.video.depth +
    config.depth`` pre-norm blocks of width ``config.dim`` with full attention (every token
    sees every chunk's). The A/V
    model's fixed sinusoidal chunk-index embedding says which chunk a token comes from, so,
    as in Mirasol, no parameter depends on the number of frames. The same :class:`TextDecoder`
    cross-attends to all of those tokens and is trained with the same :func:`lm_loss`.

    This is the comparison for Mirasol's scaling claim: same inputs, width and decoder,
    without chunking and without the Combiner's compression, so its attention cost grows
    with the square of the clip length where Mirasol's per-chunk work grows linearly.
    Takes raw frames and audio only (no precomputed features); no latent loss.
    """

    def __init__(self, config: MirasolConfig, backend: str = "auto"):
        super().__init__()
        c = self.config = config
        # depth=0: the encoders' patch embedding, position embedding and norm, no blocks.
        self.video_embed = VideoEncoder(dataclasses.replace(c.video, depth=0),
                                        c.frames_per_chunk, backend)
        self.video_proj = nn.Linear(c.video.width, c.dim)
        self.audio_embed = self.audio_proj = None
        if c.audio is not None:
            window = chunk_layout(c.frames_per_chunk, c.frames_per_chunk, c.fps,
                                  c.audio.sample_rate).samples_per_chunk
            self.audio_embed = AudioEncoder(dataclasses.replace(c.audio, depth=0), window,
                                            backend)
            self.audio_proj = nn.Linear(c.audio.width, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.num_heads, c.mlp_ratio, backend)
                                    for _ in range(c.video.depth + c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.text = TextDecoder(c.text, c.dim, backend)

    @property
    def tokens_per_chunk(self) -> int:
        """Nv + Na: the tokens each chunk adds to the flat sequence."""
        return sum(e.vit.position.shape[0] for e in (self.video_embed, self.audio_embed)
                   if e is not None)

    def encode(self, video: Tensor, audio: Tensor | None = None) -> Tensor:
        """``video`` (B, F, C, H, W) and ``audio`` (B, S), as :class:`Mirasol` takes them ->
        (B, T, Nv + Na, dim): each chunk's video then audio tokens after the flat
        transformer, every token having attended to all T chunks."""
        c = self.config
        chunks, _ = partition(video, None, frames_per_chunk=c.frames_per_chunk)
        parts = [self.video_proj(self.video_embed(chunks))]
        if self.audio_embed is not None:
            if audio is None:
                raise ValueError("this model takes audio: pass audio (B, S)")
            parts.append(self.audio_proj(self.audio_embed(partition_audio(
                audio, video.shape[1], frames_per_chunk=c.frames_per_chunk, fps=c.fps,
                sample_rate=c.audio.sample_rate))))
        x = torch.cat(parts, dim=2)
        B, T, N, dim = x.shape
        x = (x + chunk_time_embedding(x)).flatten(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).view(B, T, N, dim)

    def forward(self, video: Tensor, audio: Tensor | None, text: Tensor, *,
                answer_mask: Tensor | None = None, text_lengths: Tensor | None = None
                ) -> FlatBaselineOutput:
        """LM loss and logits, with :meth:`Mirasol.forward`'s text contract: ``text``
        (B, L) token ids right-padded to ``text_lengths``, the loss on ``answer_mask``
        (default: every token after the first, within the lengths)."""
        tokens = self.encode(video, audio)
        logits = self.text(text, tokens.flatten(1, 2))
        target = torch.ones_like(text, dtype=torch.bool) if answer_mask is None else answer_mask
        if text_lengths is not None:
            target = target & (torch.arange(text.shape[1], device=text.device)
                               < text_lengths[:, None])
        return FlatBaselineOutput(lm_loss(logits, text, target), logits, tokens)
