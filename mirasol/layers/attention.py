"""Drop-in attention modules: chunked causal self-attention (the A/V model) and
cross-modal cross-attention (text -> latents, the Combiner's queries). The chunked layer's
streaming cache is in :mod:`mirasol.layers.kv_cache`; the decoder's causal self-attention and
its cache are in :mod:`mirasol.layers.decoder`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol.distributed import ContextShard, chunk_sharded_attention
from mirasol.layers.kv_cache import ChunkKVCache, check_rule
from mirasol.layers.rotary import RotaryEmbedding
from mirasol.ops import chunked_causal_attention, cross_attention, cross_attention_padded


class ChunkedCausalSelfAttention(nn.Module):
    """Self-attention in which a token sees every token of its own chunk and of all
    earlier chunks (chunks of ``chunk_size`` consecutive tokens), or, with
    ``window_chunks``, of its own chunk and the ``window_chunks - 1`` before it plus the
    first ``sink_tokens`` tokens (the block-causal family, :mod:`mirasol.masks`).

    Parameters and state_dict keys follow timm's ``Attention`` (``qkv`` Linear with the
    q, k, v blocks stacked, ``proj`` Linear, optional ``q_norm``/``k_norm``), so a timm or
    ViT checkpoint loads unchanged; with ``chunk_size >= N`` the module computes exactly
    what timm's does.

    Streaming: :meth:`new_cache` builds a :class:`~mirasol.layers.ChunkKVCache` for this
    layer, and ``forward(x, cache=cache)`` takes the next chunks of the stream, attending
    them to the cached keys under exactly the whole-sequence mask.

    Args:
        dim: model width; ``num_heads`` must divide it.
        num_heads: query heads.
        chunk_size: tokens per chunk.
        window_chunks: chunks a token sees, its own included (None: all earlier chunks).
        sink_tokens: first tokens of the sequence every later chunk sees whatever the
            window (attention sinks; no effect without a window).
        num_kv_heads: key/value heads (grouped-query attention); default ``num_heads``
            (the only setting with timm's layout).
        qkv_bias, proj_bias, qk_norm: as in timm.
        rope: apply rotary position embedding to q and k at their positions in the sequence
            (no parameters).
        rope_base: rotary base frequency.
        proj_drop: dropout after the output projection.
        backend: passed to :func:`mirasol.ops.chunked_causal_attention`.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, chunk_size: int,
                 window_chunks: int | None = None, sink_tokens: int = 0,
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
        check_rule(type(self).__name__, window_chunks, sink_tokens)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.chunk_size, self.backend = chunk_size, backend
        self.window_chunks, self.sink_tokens = window_chunks, sink_tokens
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.rope = RotaryEmbedding(self.head_dim, rope_base) if rope else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def new_cache(self, batch: int, *, max_chunks: int | None = None,
                  capacity: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None,
                  keep_graph: bool = False) -> ChunkKVCache:
        """An empty :class:`~mirasol.layers.ChunkKVCache` for streaming ``batch`` sequences
        through this layer: its heads, head dim and mask rule; dtype and device default to
        the ``qkv`` weight's. ``max_chunks`` (windowed) / ``capacity`` (no window) size it
        (see the cache)."""
        weight = self.qkv.weight
        return ChunkKVCache(batch, self.num_kv_heads, self.head_dim,
                            chunk_size=self.chunk_size, window_chunks=self.window_chunks,
                            sink_tokens=self.sink_tokens, max_chunks=max_chunks,
                            capacity=capacity, dtype=weight.dtype if dtype is None else dtype,
                            device=weight.device if device is None else device,
                            keep_graph=keep_graph)

    def forward(self, x: Tensor, lengths: Tensor | None = None, *,
                cache: ChunkKVCache | None = None,
                shard: ContextShard | None = None) -> Tensor:
        """x: (B, N, dim) -> (B, N, dim).

        Without a cache, x is whole sequences; lengths: optional (B,) valid tokens per
        sample (rows past it carry no information).

        With ``cache`` (from :meth:`new_cache`), x is the next N tokens of the cached
        stream, at positions ``cache.length + 0..N-1``: a whole number of chunks, or the
        stream's last push. Their keys/values are written into the cache, and the output
        equals the rows of those positions of the whole-sequence forward (RoPE at the same
        positions, the same mask). Gradients reach x and the layer's weights; the cached
        rows' history only with ``keep_graph`` (see the cache).

        With ``shard`` (context parallelism, :mod:`mirasol.distributed`), x is this rank's
        tokens of whole sequences, ``shard.take(whole, 1)``, and the output is this rank's
        rows of the whole-sequence forward (:func:`~mirasol.distributed.chunk_sharded_attention`;
        rotary embeddings at the tokens' positions)."""
        B, N, _ = x.shape
        H, H_kv, D = self.num_heads, self.num_kv_heads, self.head_dim
        positions = None
        if cache is not None:
            self._check_cache(cache, x, lengths)
            positions = torch.arange(cache.length, cache.length + N, device=x.device)
        if shard is not None:
            self._check_shard(shard, lengths, cache)
            positions = shard.positions.to(x.device)
        # (B, N, heads, D) views transposed to (B, heads, N, D): the kernels read them
        # through their strides, no copy.
        q, k, v = self.qkv(x).view(B, N, H + 2 * H_kv, D).transpose(1, 2).split(
            (H, H_kv, H_kv), dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            k, v = cache.append(k, v)
        rule = dict(window_chunks=self.window_chunks, sink_tokens=self.sink_tokens,
                    backend=self.backend)
        if shard is not None:
            out = chunk_sharded_attention(q, k, v, shard.shards, group=shard.group, **rule)
        else:
            out = chunked_causal_attention(q, k, v, self.chunk_size, lengths=lengths, **rule)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, H * D)))

    def _check_shard(self, shard: ContextShard, lengths: Tensor | None,
                     cache: ChunkKVCache | None) -> None:
        name = type(self).__name__
        if not isinstance(shard, ContextShard):
            raise TypeError(f"{name}: shard must be a mirasol.distributed.ContextShard, got "
                            f"{type(shard).__name__}")
        if lengths is not None or cache is not None:
            raise ValueError(f"{name}: shard takes whole sequences of one length (no lengths, "
                             "no cache)")
        if shard.shards.chunk_size != self.chunk_size:
            raise ValueError(f"{name}: the shards' chunk_size {shard.shards.chunk_size} is "
                             f"not the layer's {self.chunk_size}")

    def _check_cache(self, cache: ChunkKVCache, x: Tensor, lengths: Tensor | None) -> None:
        """A push the cache can take, into a cache built for this layer: raised before any
        compute."""
        name = type(self).__name__
        if not isinstance(cache, ChunkKVCache):
            raise TypeError(f"{name}: cache must be a ChunkKVCache (see new_cache), got "
                            f"{type(cache).__name__}")
        if lengths is not None:
            raise ValueError(f"{name}: lengths is for whole sequences; a cached stream "
                             "keeps every sample at the same position")
        mine = (self.num_kv_heads, self.head_dim, self.chunk_size, self.window_chunks,
                self.sink_tokens)
        theirs = (cache.num_kv_heads, cache.head_dim, cache.chunk_size, cache.window_chunks,
                  cache.sink_tokens)
        if mine != theirs:
            labels = ("num_kv_heads", "head_dim", "chunk_size", "window_chunks", "sink_tokens")
            raise ValueError(f"{name}: the cache was built for another layer: " + ", ".join(
                f"{label} {a} (layer) != {b} (cache)"
                for label, a, b in zip(labels, mine, theirs) if a != b))
        cache.check_push(x.shape[0], x.shape[1], x.device)

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        window = ("" if self.window_chunks is None else
                  f", window_chunks={self.window_chunks}, sink_tokens={self.sink_tokens}")
        return (f"num_heads={self.num_heads}{kv}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}{window}, backend={self.backend!r}")


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
