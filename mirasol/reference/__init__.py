"""The specification of each op in plain, dense PyTorch (float64-capable).

Used by tests and benchmarks as the oracle; never imported by the kernels. The masks the
attention ops attend with are defined in :mod:`mirasol.masks`."""

from .attention import chunked_causal_attention, cross_attention, masked_attention
from .token_pool import TokenLearner, token_pool

__all__ = ["TokenLearner", "token_pool", "chunked_causal_attention", "cross_attention",
           "masked_attention"]
