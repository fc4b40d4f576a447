"""The specification of each op in plain, dense PyTorch (float64-capable).

Used by tests and benchmarks as the oracle; never imported by the kernels."""

from .attention import chunked_causal_attention, chunked_causal_mask, length_mask, masked_attention

__all__ = ["chunked_causal_attention", "chunked_causal_mask", "length_mask", "masked_attention"]
