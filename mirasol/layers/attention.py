"""Drop-in attention modules."""

from __future__ import annotations

from torch import Tensor, nn

from mirasol.layers.rotary import RotaryEmbedding
from mirasol.ops import chunked_causal_attention


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
