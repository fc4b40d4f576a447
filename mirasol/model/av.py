"""The audio-video autoregressive model: a transformer over the T·m combined tokens with
chunked causal attention (chunk = one time chunk's m tokens), and its latent prediction
loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirasol.layers import ChunkedCausalSelfAttention, Mlp


def chunk_time_embedding(combined: Tensor, base: float = 10000.0) -> Tensor:
    """(T, 1, dim) sinusoidal embedding (Vaswani et al.) of each chunk's index t for
    ``combined`` (B, T, m, dim); computed, not learned."""
    T, dim = combined.shape[1], combined.shape[-1]
    acc = torch.promote_types(combined.dtype, torch.float32)
    freqs = base ** -(torch.arange(0, dim, 2, device=combined.device, dtype=acc) / dim)
    angles = torch.arange(T, device=combined.device, dtype=acc)[:, None] * freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)[:, None, :dim].to(combined.dtype)


class AVBlock(nn.Module):
    """Pre-norm block whose attention lets a token see its own and all earlier chunks."""

    def __init__(self, dim: int, num_heads: int, chunk_size: int, mlp_ratio: float,
                 backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ChunkedCausalSelfAttention(dim, num_heads, chunk_size=chunk_size,
                                               qkv_bias=True, rope=True, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AVTransformer(nn.Module):
    """(B, T, m, dim) combined chunk tokens -> (B, T, m, dim) latents; the latents of chunk
    t depend on chunks <= t only (rotary positions, no parameter depends on T)."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_tokens: int,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(AVBlock(dim, num_heads, num_tokens, mlp_ratio, backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # Predicts chunk t+1's combined tokens from chunk t's latents (slot by slot).
        self.predictor = nn.Linear(dim, dim)

    def forward(self, combined: Tensor) -> Tensor:
        # Each chunk's tokens get a sinusoidal embedding of the chunk's index: the latents
        # then say *when* (the text decoder's cross-attention has no positions of its own),
        # with no parameter that depends on T.
        x = (combined + chunk_time_embedding(combined)).flatten(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).view_as(combined)

    def latent_loss(self, latents: Tensor, combined: Tensor) -> Tensor:
        """Latent prediction loss: ``mean(1 - cos(predictor(latents[:, t]), combined[:, t+1]))``
        over t < T-1 and the m token slots. Targets are detached (stop-gradient): the loss
        trains the A/V model to anticipate the Combiner's next output, never the Combiner
        toward predictable features (:meth:`Mirasol.forward` detaches its input as well).
        Cosine rather than L2: it ignores the targets' scale, which the LM loss moves
        freely. 0 when T = 1."""
        if combined.shape[1] < 2:
            return latents.sum() * 0.0
        predicted = self.predictor(latents[:, :-1])
        target = combined[:, 1:].detach()
        acc = torch.promote_types(predicted.dtype, torch.float32)
        return (1 - F.cosine_similarity(predicted.to(acc), target.to(acc), dim=-1)).mean()

