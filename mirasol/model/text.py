"""The text decoder: a stack of :class:`mirasol.layers.DecoderLayer` (causal self-attention
with a key/value cache for generation) cross-attending to the A/V latents in every
``cross_attention_every``-th layer, its decoding state, the latents' normalization, and
the LM loss. Text never flows back into the A/V model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mirasol.layers import DecoderLayer, KVCache
from mirasol.layers.decoder import ContextKV
from mirasol.model.config import TextConfig


@dataclass
class DecoderState:
    """What incremental decoding carries between steps: each layer's self-attention cache,
    the filled rows per sample (B,), and each cross-attending layer's projected latents."""

    caches: list[KVCache]
    lengths: Tensor
    context: list[ContextKV]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        for cache in self.caches:
            cache.reorder(index)
        self.lengths = self.lengths[index]
        self.context = [None if kv is None else (kv[0][index], kv[1][index])
                        for kv in self.context]


class ContextNorm(nn.Module):
    """Standardizes the A/V latents the decoder reads: each (token slot, feature) by running
    estimates of its mean and variance over clips and chunks.

    Why: a chunk's latents vary little from clip to clip around a per-slot constant (small
    objects on a static background, pooled, then layer-normalized), so cross-attention
    starts out unable to tell the chunks apart. The estimates are detached moving averages
    (momentum ``momentum``; the first batch sets them) of batch moments that are averaged
    across data-parallel ranks, so the forward never depends on how a batch is sharded.
    ``eps`` bounds the gain at 1/sqrt(eps) for features that hardly vary (informative ones
    vary with std around 0.1). Input and output (B, T, m, dim)."""

    def __init__(self, num_tokens: int, dim: int, momentum: float = 0.1, eps: float = 1e-3):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(num_tokens, dim))
        self.register_buffer("var", torch.ones(num_tokens, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, latents: Tensor) -> None:
        x = latents.detach().to(self.mean.dtype)
        moments = torch.stack((x.mean((0, 1)), x.square().mean((0, 1))))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, square = moments
        weight = 1.0 if int(self.updates) == 0 else self.momentum
        self.mean.lerp_(mean, weight)
        self.var.lerp_((square - mean.square()).clamp(min=0), weight)
        self.updates += 1

    def forward(self, latents: Tensor) -> Tensor:
        if self.training:
            self._update(latents)
        return (latents - self.mean) * torch.rsqrt(self.var + self.eps)


class TextDecoder(nn.Module):
    """Token ids (B, L) and A/V latents (B, Nl, context_dim) -> next-token logits
    (B, L, vocab_size). Rotary positions; no parameter depends on L or Nl."""

    def __init__(self, config: TextConfig, context_dim: int, backend: str = "auto"):
        super().__init__()
        c = config
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.width)
        self.layers = nn.ModuleList(
            DecoderLayer(c.width, context_dim, c.num_heads, c.mlp_ratio,
                         cross=i % c.cross_attention_every == 0, backend=backend)
            for i in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size, bias=False)

    def context(self, latents: Tensor) -> list[ContextKV]:
        """Each cross-attending layer's keys and values of the latents (None elsewhere)."""
        return [None if layer.cross_attn is None else layer.cross_attn.project_context(latents)
                for layer in self.layers]

    def forward(self, tokens: Tensor, latents: Tensor | None = None, *,
                state: DecoderState | None = None) -> Tensor:
        """Training / full recompute: ``forward(tokens, latents)``. Incremental:
        ``forward(new_tokens, state=state)`` appends the new tokens (B, n) after each
        sample's ``state.lengths`` filled rows and advances the lengths by n; positions of
        a right-padded prompt are dropped by setting ``state.lengths`` afterwards."""
        context = self.context(latents) if state is None else state.context
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            cache = None if state is None else state.caches[i]
            x = layer(x, context[i], cache, None if state is None else state.lengths)
        if state is not None:
            state.lengths = state.lengths + tokens.shape[1]
        return self.head(self.norm(x))

    def start(self, latents: Tensor, capacity: int) -> DecoderState:
        """An empty decoding state for ``latents.shape[0]`` samples of up to ``capacity``
        tokens each."""
        B = latents.shape[0]
        caches = [KVCache.empty(B, layer.self_attn.num_kv_heads, layer.self_attn.head_dim,
                                capacity, dtype=latents.dtype, device=latents.device)
                  for layer in self.layers]
        lengths = torch.zeros(B, dtype=torch.long, device=latents.device)
        return DecoderState(caches, lengths, self.context(latents))


def lm_loss(logits: Tensor, tokens: Tensor, target_mask: Tensor) -> Tensor:
    """Cross-entropy of predicting ``tokens[:, i+1]`` from position i where
    ``target_mask[:, i+1]`` is True (the answer tokens): averaged over each sample's targets,
    then over samples (a sample without targets counts 0). Per-sample averaging weighs short
    and long answers alike, and makes the loss of a batch the mean of its shards' losses, so
    data-parallel training matches one process on the global batch. logits (B, L, V),
    tokens (B, L) int, target_mask (B, L) bool; computed in fp32 or wider."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    losses = F.cross_entropy(logits[:, :-1].to(acc).transpose(1, 2), tokens[:, 1:],
                             reduction="none")
    mask = target_mask[:, 1:].to(acc)
    return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
