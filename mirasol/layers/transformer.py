"""Transformer pieces shared by the Combiners (and the model): an MLP and a pre-norm
block whose attention runs within each row of the batch (each row one chunk)."""

from __future__ import annotations

from torch import Tensor, nn

from mirasol.layers.attention import CrossModalAttention


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's and scenic's MlpBlock layout)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim if out_dim is None else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x)).

    Rows of the batch do not see each other: with one chunk per row, a batch of chunks is
    block-diagonal attention in one call. ``forward(x, queries=m)`` keeps only the last m
    tokens as queries (and runs the MLP on those only), for a final layer whose other
    outputs are not needed.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossModalAttention(dim, dim, num_heads, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                queries: int | None = None) -> Tensor:
        """x: (B, L, dim); lengths: optional (B,) valid tokens per row. Returns (B, L, dim),
        or (B, queries, dim) for the last ``queries`` tokens."""
        h = self.norm1(x)
        q = h if queries is None else h[:, -queries:]
        x = (x if queries is None else x[:, -queries:]) + self.attn(q, h,
                                                                     context_lengths=lengths)
        return x + self.mlp(self.norm2(x))
