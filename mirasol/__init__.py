"""mirasol: fused Triton kernels for long audio-video models, and Mirasol3B.

Importing mirasol does not import triton: the kernels load on the first call that uses
the triton backend.
"""

from mirasol.layers import (ChunkedCausalSelfAttention, CrossModalAttention, TokenLearner,
                            TransformerCombiner, TTMCombiner, set_backend)
from mirasol.ops import (BackendUnavailable, chunked_causal_attention, cross_attention,
                         cross_attention_padded, explain, token_pool)

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "ChunkedCausalSelfAttention", "CrossModalAttention",
           "TokenLearner", "TransformerCombiner", "TTMCombiner", "chunked_causal_attention",
           "cross_attention", "cross_attention_padded", "explain", "set_backend", "token_pool",
           "__version__"]
