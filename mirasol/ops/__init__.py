"""The ops: functional entry points with argument checks, backend choice and autograd.

Backends (``backend=``): ``"triton"`` (the fused kernels: CUDA, or CPU under
``TRITON_INTERPRET=1``), ``"torch"`` (an efficient PyTorch composite that runs anywhere),
``"reference"`` (the dense specification) and ``"auto"`` (triton on CUDA when it can serve
the call, else torch; ``MIRASOL_BACKEND`` overrides it).
"""

from mirasol.ops._backends import BACKENDS, BackendSpec, BackendUnavailable, choose_backend
from mirasol.ops.chunked_attention import ChunkedAttentionFunction, chunked_causal_attention
from mirasol.ops.cross_attention import (CrossAttentionFunction, cross_attention,
                                         cross_attention_padded)
from mirasol.ops.token_pool import TokenPoolFunction, token_pool

__all__ = [
    "BACKENDS", "BackendSpec", "BackendUnavailable", "choose_backend",
    "ChunkedAttentionFunction", "chunked_causal_attention",
    "CrossAttentionFunction", "cross_attention", "cross_attention_padded",
    "TokenPoolFunction", "token_pool",
]
