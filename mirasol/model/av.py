"""The audio-video autoregressive model: a transformer over the T·m combined tokens with
chunked causal attention (chunk = one time chunk's m tokens), and its latent prediction
loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mirasol.distributed import ChunkShards, ContextShard
from mirasol.layers import ChunkedCausalSelfAttention, ChunkKVCache, Mlp


def chunk_time_embedding(combined: Tensor, first_chunk: int = 0, base: float = 10000.0
                         ) -> Tensor:
    """(T, 1, dim) sinusoidal embedding (Vaswani et al.) of each chunk's index
    ``first_chunk + t`` for ``combined`` (B, T, m, dim); computed, not learned."""
    T, dim = combined.shape[1], combined.shape[-1]
    acc = torch.promote_types(combined.dtype, torch.float32)
    freqs = base ** -(torch.arange(0, dim, 2, device=combined.device, dtype=acc) / dim)
    angles = torch.arange(first_chunk, first_chunk + T, device=combined.device,
                          dtype=acc)[:, None] * freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)[:, None, :dim].to(combined.dtype)


class AVBlock(nn.Module):
    """Pre-norm block whose attention lets a token see its own and all earlier chunks (or,
    with ``window_chunks``, the window's and the sinks')."""

    def __init__(self, dim: int, num_heads: int, chunk_size: int, mlp_ratio: float,
                 backend: str, window_chunks: int | None = None, sink_tokens: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ChunkedCausalSelfAttention(dim, num_heads, chunk_size=chunk_size,
                                               window_chunks=window_chunks,
                                               sink_tokens=sink_tokens, qkv_bias=True,
                                               rope=True, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cache: ChunkKVCache | None = None,
                shard: ContextShard | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), cache=cache, shard=shard)
        return x + self.mlp(self.norm2(x))


class AVTransformer(nn.Module):
    """(B, T, m, dim) combined chunk tokens -> (B, T, m, dim) latents; the latents of chunk
    t depend on chunks <= t only (rotary positions, no parameter depends on T). With
    ``window_chunks`` W, each layer's attention sees chunks ``t - W + 1 .. t`` and the
    first ``sink_chunks``, so the latents reach back ``depth · (W - 1)`` chunks at most.
    ``time_embedding``: see :class:`~mirasol.model.MirasolConfig`.

    ``context_group`` (None, or a process group: :meth:`Mirasol.context_parallel`): the
    ranks of the group share each clip's chunks (zigzag :class:`~mirasol.distributed.ChunkShards`),
    each running the blocks on its own, and gather the latents at the end; every rank of
    the group passes the same ``combined`` and gets the same latents."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_tokens: int,
                 mlp_ratio: float = 4.0, backend: str = "auto", *,
                 window_chunks: int | None = None, sink_chunks: int = 0,
                 time_embedding: bool = True):
        super().__init__()
        self.time_embedding = time_embedding
        self.blocks = nn.ModuleList(AVBlock(dim, num_heads, num_tokens, mlp_ratio, backend,
                                            window_chunks, sink_chunks * num_tokens)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.context_group: dist.ProcessGroup | None = None
        # Predicts chunk t+1's combined tokens from chunk t's latents (slot by slot).
        self.predictor = nn.Linear(dim, dim)

    def new_caches(self, batch: int, *, max_chunks: int = 1, capacity_chunks: int | None = None,
                   dtype: torch.dtype | None = None, device=None) -> list[ChunkKVCache]:
        """One rolling key/value cache per block for streaming ``batch`` streams, pushes of
        up to ``max_chunks`` chunks (windowed), or up to ``capacity_chunks`` chunks in all
        (no window: every key stays visible)."""
        attn = self.blocks[0].attn
        size = (dict(max_chunks=max_chunks) if attn.window_chunks is not None else
                dict(capacity=None if capacity_chunks is None
                     else capacity_chunks * attn.chunk_size))
        return [block.attn.new_cache(batch, dtype=dtype, device=device, **size)
                for block in self.blocks]

    def forward(self, combined: Tensor, *, first_chunk: int = 0,
                caches: list[ChunkKVCache] | None = None) -> Tensor:
        """``combined`` (B, T, m, dim) are chunks ``first_chunk ..`` of the stream (time
        embedding); with ``caches`` (:meth:`new_caches`) they are the next chunks of a
        cached stream, attended to the cached keys as in the whole-stream forward."""
        # The sinusoidal embedding of each chunk's index makes the latents say *when* (the
        # text decoder's cross-attention has no positions of its own), with no parameter
        # that depends on T; without it a windowed model is shift-invariant in time.
        if self.time_embedding:
            combined = combined + chunk_time_embedding(combined, first_chunk)
        x = combined.flatten(1, 2)
        shard = self._shard(x) if caches is None else None
        if shard is not None:
            x = shard.take(x, 1)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], shard)
        x = self.norm(x)
        return (x if shard is None else shard.gather(x, 1)).view_as(combined)

    def _shard(self, x: Tensor) -> ContextShard | None:
        """This rank's share of ``x`` (B, T·m, dim) in the context group, if there is one."""
        group = self.context_group
        if group is None or dist.get_world_size(group) == 1:
            return None
        chunk = self.blocks[0].attn.chunk_size
        return ContextShard(ChunkShards(chunk, (x.shape[1],), dist.get_world_size(group)),
                            group)

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

