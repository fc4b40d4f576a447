"""Mirasol3B's Combiners: one chunk's video and audio tokens -> m compact tokens.

Both take ``video`` (B, T, Nv, dim) and optional ``audio`` (B, T, Na, dim) — T chunks of
time-aligned tokens — and return (B, T, m, dim). Neither has a parameter that depends on
T, Nv or Na.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol.layers.token_learner import TokenLearner
from mirasol.layers.transformer import Block


def _chunk_tokens(video: Tensor, audio: Tensor | None, modality: Tensor) -> Tensor:
    """(B, T, Nv [+ Na], dim): each chunk's video then audio tokens, each marked with a
    learned modality embedding."""
    if video.dim() != 4 or (audio is not None and audio.shape[:2] != video.shape[:2]):
        raise ValueError(f"video must be (B, T, Nv, dim) and audio (B, T, Na, dim) with the "
                         f"same B and T, got {tuple(video.shape)} and "
                         f"{None if audio is None else tuple(audio.shape)}")
    parts = [video + modality[0]]
    if audio is not None:
        parts.append(audio + modality[1])
    return torch.cat(parts, dim=2)


class TransformerCombiner(nn.Module):
    """A transformer over each chunk's ``[video tokens; audio tokens; m learned tokens]``;
    the last m outputs are the chunk's representation.

    All chunks of a batch run in one call per layer: each chunk is a row of a
    (B*T, L, dim) batch, so attention is block-diagonal (the cross-attention op with
    one segment per chunk). The last layer computes only the m queries it needs (the
    learned tokens against all of the chunk's tokens) and runs its MLP on them only.
    """

    def __init__(self, dim: int, num_tokens: int = 32, depth: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.num_tokens = num_tokens
        self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.modality = nn.Parameter(torch.zeros(2, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def initial_state(self, batch: int) -> None:
        """No state: each chunk is combined on its own."""
        return None

    def step(self, video: Tensor, audio: Tensor | None, state: None) -> tuple[Tensor, None]:
        """:meth:`forward` on the next chunks of a stream (the state is None)."""
        return self(video, audio), None

    def forward(self, video: Tensor, audio: Tensor | None = None) -> Tensor:
        """video (B, T, Nv, dim), audio (B, T, Na, dim) or None -> (B, T, m, dim)."""
        tokens = _chunk_tokens(video, audio, self.modality)
        B, T, _, dim = tokens.shape
        learned = self.tokens.expand(B, T, self.num_tokens, dim)
        x = torch.cat((tokens, learned), dim=2).flatten(0, 1)  # (B*T, L, dim)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1](x, queries=self.num_tokens)
        return self.norm(x).unflatten(0, (B, T))


class TTMCombiner(nn.Module):
    """Token Turing Machine (Ryoo et al., CVPR 2023) as a Combiner: a memory of M tokens
    carried across a sample's chunks, in order.

    Per chunk: read r tokens with a TokenLearner over ``[memory; chunk tokens]``, process
    them with a small transformer (position embeddings, blocks, final norm), write the new
    memory with a TokenLearner over ``[memory; chunk tokens; processed]``. The processed
    tokens are the chunk's output, so chunk t's output depends on chunks <= t only. The
    memory starts as M learned tokens (or zeros, ``learned_memory=False``, as in scenic).
    """

    def __init__(self, dim: int, num_tokens: int = 32, memory_size: int = 64, depth: int = 2,
                 num_heads: int = 8, mlp_ratio: float = 4.0, bottleneck_dim: int = 64,
                 learned_memory: bool = True, backend: str = "auto"):
        super().__init__()
        self.num_tokens, self.memory_size = num_tokens, memory_size
        self.modality = nn.Parameter(torch.zeros(2, dim))
        memory = torch.zeros(memory_size, dim)
        if learned_memory:
            self.memory = nn.Parameter(memory)
        else:
            self.register_buffer("memory", memory)
        self.read = TokenLearner(dim, num_tokens, bottleneck_dim, backend)
        self.position = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.write = TokenLearner(dim, memory_size, bottleneck_dim, backend)

    def initial_state(self, batch: int) -> Tensor:
        """The memory (batch, M, dim) before a stream's first chunk."""
        return self.memory.expand(batch, *self.memory.shape)

    def step(self, video: Tensor, audio: Tensor | None, memory: Tensor
             ) -> tuple[Tensor, Tensor]:
        """The next chunks of a stream: video (B, k, Nv, dim), audio (B, k, Na, dim) or None
        and the memory (B, M, dim) after the chunks before them -> ((B, k, r, dim) outputs,
        the memory after these chunks). Pushing a clip k chunks at a time gives
        :meth:`forward`'s outputs."""
        tokens = _chunk_tokens(video, audio, self.modality)
        outputs = []
        for chunk in tokens.unbind(1):
            x = self.read(torch.cat((memory, chunk), dim=1)) + self.position
            for block in self.blocks:
                x = block(x)
            x = self.norm(x)
            memory = self.write(torch.cat((memory, chunk, x), dim=1))
            outputs.append(x)
        return torch.stack(outputs, dim=1), memory

    def forward(self, video: Tensor, audio: Tensor | None = None) -> Tensor:
        """video (B, T, Nv, dim), audio (B, T, Na, dim) or None -> (B, T, r, dim)."""
        return self.step(video, audio, self.initial_state(video.shape[0]))[0]
