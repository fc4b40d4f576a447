"""The specification of each op in plain, dense PyTorch (float64-capable).

Used by tests and benchmarks as the oracle; never imported by the kernels."""

from .attention import (chunked_causal_attention, chunked_causal_mask, cross_attention,
                        cross_attention_mask, length_mask, masked_attention, segment_ids)
from .token_pool import TokenLearner, token_pool

__all__ = ["TokenLearner", "token_pool",
           "chunked_causal_attention", "chunked_causal_mask", "cross_attention",
           "cross_attention_mask", "length_mask", "masked_attention", "segment_ids"]
