"""The text decoder's layers: causal self-attention with rotary positions and a key/value
cache for incremental decoding, and the decoder block that adds cross-attention to a
context (the A/V latents)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mirasol.layers.attention import CrossModalAttention
from mirasol.layers.rotary import RotaryEmbedding
from mirasol.layers.transformer import Mlp
from mirasol.ops import cross_attention_padded

# A cross-attending layer's projected context (keys, values), as
# :meth:`CrossModalAttention.project_context` returns them; None for a layer without one.
ContextKV = tuple[Tensor, Tensor] | None


@dataclass
class KVCache:
    """One attention layer's keys and values for incremental decoding: buffers
    (B, num_kv_heads, capacity, head_dim) of which sample b's first ``lengths[b]`` rows are
    filled. The fill lengths live with the caller (one tensor for all layers)."""

    keys: Tensor
    values: Tensor

    @classmethod
    def empty(cls, batch: int, num_kv_heads: int, head_dim: int, capacity: int, *,
              dtype: torch.dtype, device: torch.device | str | None = None) -> KVCache:
        shape = (batch, num_kv_heads, capacity, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    def write(self, k: Tensor, v: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, num_kv_heads, n, head_dim) at rows ``lengths[b] + 0..n-1`` of each
        sample; return the buffers' views through the longest sample's last new row."""
        n, capacity = k.shape[2], self.keys.shape[2]
        end = int(lengths.max()) + n
        if end > capacity:
            raise ValueError(f"KVCache: writing {n} rows after {end - n} filled exceeds the "
                             f"capacity of {capacity} rows")
        rows = lengths[:, None] + torch.arange(n, device=lengths.device)
        index = rows[:, None, :, None].expand_as(k)
        self.keys.scatter_(2, index, k)
        self.values.scatter_(2, index, v)
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` (beam search)."""
        self.keys, self.values = self.keys[index], self.values[index]


class CausalSelfAttention(nn.Module):
    """Decoder self-attention: causal, rotary positions, and an optional :class:`KVCache`.

    Without a cache, position i of each row sees rows <= i (right padding is harmless: a
    valid row never sees a later pad). With a cache, the n new rows of sample b sit at
    positions ``cache_lengths[b] + 0..n-1`` and see the cached rows and themselves causally
    (bottom-right causal attention over ``cache_lengths + n`` keys), so prefill and
    one-token steps are the same call.

    Args:
        dim: model width; num_heads, num_kv_heads (grouped-query), head_dim = dim // num_heads.
        qkv_bias: bias on the fused ``qkv`` projection (``proj`` always has one).
        rope_base: rotary base frequency.
        backend: passed to :func:`mirasol.ops.cross_attention_padded`.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, num_kv_heads: int | None = None,
                 qkv_bias: bool = False, rope_base: float = 10000.0, backend: str = "auto"):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), and "
                             f"num_heads by num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.backend = dim // num_heads, backend
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.rope = RotaryEmbedding(self.head_dim, rope_base)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cache: KVCache | None = None,
                cache_lengths: Tensor | None = None) -> Tensor:
        """x: (B, n, dim) -> (B, n, dim). With ``cache``, ``cache_lengths`` (B,) int64 gives
        each sample's filled rows; the new keys/values are written into the cache (the
        caller advances the lengths)."""
        B, n, _ = x.shape
        H, H_kv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, n, H + 2 * H_kv, D).transpose(1, 2).split(
            (H, H_kv, H_kv), dim=1)
        k_lengths = None
        if cache is None:
            q, k = self.rope(q), self.rope(k)
        else:
            if cache_lengths is None:
                raise ValueError("CausalSelfAttention: a cache needs cache_lengths (B,)")
            positions = cache_lengths[:, None] + torch.arange(n, device=x.device)
            q, k = self.rope(q, positions), self.rope(k, positions)
            k, v = cache.write(k, v, cache_lengths)
            k_lengths = cache_lengths + n
        out = cross_attention_padded(q, k, v, k_lengths=k_lengths, causal=True,
                                     backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(B, n, H * D))

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return f"num_heads={self.num_heads}{kv}, head_dim={self.head_dim}, backend={self.backend!r}"


class DecoderLayer(nn.Module):
    """x + self_attn(norm(x)) [+ cross_attn(norm(x), context)] + mlp(norm(x)).

    Args:
        width: model width; context_dim: the context's width (cross-attention keys).
        num_heads: heads of both attentions; mlp_ratio: MLP hidden width / width.
        cross: whether the layer cross-attends to the context.
        backend: passed to the attention ops.
    """

    def __init__(self, width: int, context_dim: int, num_heads: int, mlp_ratio: float,
                 cross: bool, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = CausalSelfAttention(width, num_heads, backend=backend)
        self.norm_cross = nn.LayerNorm(width) if cross else None
        self.cross_attn = (CrossModalAttention(width, context_dim, num_heads, backend=backend)
                           if cross else None)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, context: ContextKV, cache: KVCache | None = None,
                cache_lengths: Tensor | None = None) -> Tensor:
        """x (B, n, width) -> (B, n, width); ``context``: this layer's projected context
        (None for a layer without cross-attention); ``cache``/``cache_lengths`` as in
        :meth:`CausalSelfAttention.forward`."""
        x = x + self.self_attn(self.norm1(x), cache, cache_lengths)
        if self.cross_attn is not None:
            x = x + self.cross_attn.attend(self.norm_cross(x), *context)
        return x + self.mlp(self.norm2(x))
