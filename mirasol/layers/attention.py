"""Drop-in attention modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mirasol.layers.rotary import RotaryEmbedding
from mirasol.ops import chunked_causal_attention, cross_attention, cross_attention_padded


class ChunkedCausalSelfAttention(nn.Module):
    """Self-attention in which a token sees every token of its own chunk and of all
    earlier chunks (chunks of ``chunk_size`` consecutive tokens).

    Parameters and state_dict keys follow timm's ``Attention`` (``qkv`` Linear with the
    q, k, v blocks stacked, ``proj`` Linear, optional ``q_norm``/``k_norm``), so a timm or
    ViT checkpoint loads unchanged; with ``chunk_size >= N`` the module computes exactly
    what timm's does.

    Args:
        dim: model width; ``num_heads`` must divide it.
        num_heads: query heads.
        chunk_size: tokens per chunk.
        num_kv_heads: key/value heads (grouped-query attention); default ``num_heads``
            (the only setting with timm's layout).
        qkv_bias, proj_bias, qk_norm: as in timm.
        rope: apply rotary position embedding to q and k (no parameters).
        rope_base: rotary base frequency.
        proj_drop: dropout after the output projection.
        backend: passed to :func:`mirasol.ops.chunked_causal_attention`.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, chunk_size: int,
                 num_kv_heads: int | None = None, qkv_bias: bool = False,
                 proj_bias: bool = True, qk_norm: bool = False, rope: bool = False,
                 rope_base: float = 10000.0, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.chunk_size, self.backend = chunk_size, backend
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.rope = RotaryEmbedding(self.head_dim, rope_base) if rope else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, N, dim); lengths: optional (B,) valid tokens per sample (rows past it
        carry no information). Returns (B, N, dim)."""
        B, N, _ = x.shape
        H, H_kv, D = self.num_heads, self.num_kv_heads, self.head_dim
        # (B, N, heads, D) views transposed to (B, heads, N, D): the kernels read them
        # through their strides, no copy.
        q, k, v = self.qkv(x).view(B, N, H + 2 * H_kv, D).transpose(1, 2).split(
            (H, H_kv, H_kv), dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        out = chunked_causal_attention(q, k, v, self.chunk_size, lengths=lengths,
                                       backend=self.backend)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, H * D)))

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return (f"num_heads={self.num_heads}{kv}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}, backend={self.backend!r}")


class CrossModalAttention(nn.Module):
    """Queries from one stream attend to keys/values from another (text -> audio-video
    latents, a chunk's learned queries -> its tokens). Only keys are limited by lengths:
    every query row is computed.

    Parameters follow ``torch.nn.MultiheadAttention``'s separate projections
    (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``); :meth:`from_multihead_attention`
    copies an existing module's weights, ``kdim``/``vdim`` included.

    Args:
        dim: query (and output) width.
        context_dim: key width (default ``dim``); value_dim: value width (default
            ``context_dim``; give values separately to :meth:`forward` when it differs).
        num_heads: query heads; ``num_kv_heads`` (default ``num_heads``) for grouped
            queries; ``head_dim`` default ``dim // num_heads``.
        bias: biases on the four projections (MultiheadAttention's default: True).
        causal: bottom-right causal within each sample (self-attention use).
        backend: passed to the ops.
    """

    def __init__(self, dim: int, context_dim: int | None = None, num_heads: int = 8, *,
                 value_dim: int | None = None, num_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, causal: bool = False,
                 backend: str = "auto"):
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        value_dim = context_dim if value_dim is None else value_dim
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), "
                                 "or give head_dim")
            head_dim = dim // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.backend = causal, backend
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(context_dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(value_dim, num_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, dim, bias=bias)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention,
                                 backend: str = "auto") -> "CrossModalAttention":
        """The same attention as ``mha`` (called batch-first), its weights copied."""
        if mha.dropout:
            raise ValueError("from_multihead_attention: attention dropout "
                             f"({mha.dropout}) is not supported by the fused kernels")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("from_multihead_attention: add_bias_kv and add_zero_attn are "
                             "not supported")
        bias = mha.in_proj_bias is not None
        layer = cls(mha.embed_dim, mha.kdim, mha.num_heads, value_dim=mha.vdim, bias=bias,
                    backend=backend)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
        with torch.no_grad():
            for proj, w, b in zip((layer.q_proj, layer.k_proj, layer.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer.to(mha.out_proj.weight.dtype)

    def forward(self, x: Tensor, context: Tensor, value: Tensor | None = None, *,
                context_lengths: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                cu_seqlens_k: Tensor | None = None, max_seqlen_q: int | None = None,
                max_seqlen_k: int | None = None) -> Tensor:
        """Padded: x (B, Lq, dim), context (B, Lk, context_dim), optional context_lengths
        (B,) valid keys per sample -> (B, Lq, dim). Packed: x (total_q, dim), context
        (total_k, context_dim) with int32 cu_seqlens_q/k (B + 1,) -> (total_q, dim).
        ``value`` (same layout as context) when values come from another tensor."""
        k, v = self.project_context(context, value)
        return self.attend(x, k, v, context_lengths=context_lengths, cu_seqlens_q=cu_seqlens_q,
                           cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                           max_seqlen_k=max_seqlen_k)

    def project_context(self, context: Tensor, value: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
        """Keys and values (..., rows, num_kv_heads, head_dim) of a context: computed once
        and reused by :meth:`attend` when the same context serves many queries (decoding)."""
        value = context if value is None else value
        return (self.k_proj(context).unflatten(-1, (self.num_kv_heads, self.head_dim)),
                self.v_proj(value).unflatten(-1, (self.num_kv_heads, self.head_dim)))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, *, context_lengths: Tensor | None = None,
               cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
               max_seqlen_q: int | None = None, max_seqlen_k: int | None = None) -> Tensor:
        """:meth:`forward` with keys and values from :meth:`project_context`."""
        # Projections reshaped to (..., rows, heads, D) views; the ops read them by stride.
        q = self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim))
        if cu_seqlens_q is not None:
            out = cross_attention(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                  max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                                  causal=self.causal, backend=self.backend)
        else:
            out = cross_attention_padded(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         k_lengths=context_lengths, causal=self.causal,
                                         backend=self.backend).transpose(1, 2)
        return self.out_proj(out.flatten(-2))

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        causal = ", causal=True" if self.causal else ""
        return (f"num_heads={self.num_heads}{kv}, head_dim={self.head_dim}{causal}, "
                f"backend={self.backend!r}")


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
