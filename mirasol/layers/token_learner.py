"""TokenLearner v1.1 on the fused token-pooling op."""

from __future__ import annotations

from torch import Tensor, nn

from mirasol.layers.transformer import Mlp
from mirasol.ops import token_pool


class TokenLearner(nn.Module):
    """Learns ``num_tokens`` summaries of a set of tokens (Ryoo et al., v1.1): weights =
    softmax over tokens of MLP(LayerNorm(x)), one column per output token; output =
    weightsᵀ · x, computed by :func:`mirasol.ops.token_pool` (no weight matrix in memory
    on the triton backend).

    Parameters and state_dict keys (``norm``, ``mlp.fc1``, ``mlp.fc2``) match the plain
    PyTorch :class:`mirasol.reference.TokenLearner`, so weights move between them.
    """

    def __init__(self, dim: int, num_tokens: int, bottleneck_dim: int = 64,
                 backend: str = "auto"):
        super().__init__()
        self.num_tokens, self.backend = num_tokens, backend
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, bottleneck_dim, num_tokens)

    def forward(self, x: Tensor, *, lengths: Tensor | None = None,
                cu_seqlens: Tensor | None = None) -> Tensor:
        """x: (B, N, dim) with optional lengths (B,), or packed (total, dim) with int32
        cu_seqlens (B + 1,). Returns (B, num_tokens, dim)."""
        return token_pool(x, self.mlp(self.norm(x)), lengths=lengths, cu_seqlens=cu_seqlens,
                          backend=self.backend)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, backend={self.backend!r}"
