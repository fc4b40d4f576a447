"""The ops: functional entry points with argument checks, backend choice and autograd.

Backends (``backend=``): ``"triton"`` (the fused kernels: CUDA, or CPU under
``TRITON_INTERPRET=1``), ``"torch"`` (an efficient PyTorch composite that runs anywhere),
``"reference"`` (the dense specification) and ``"auto"`` (triton on CUDA when it can serve
the call, else torch; ``MIRASOL_BACKEND`` overrides it). :func:`explain` says, for one
concrete call, where it runs and why each other backend refuses it.
"""

from mirasol.ops._backends import (BACKENDS, BackendSpec, BackendUnavailable, Call,
                                   Explanation, Limit, Refusal, choose_backend)
from mirasol.ops._op import OPS, Op, explain
from mirasol.ops.chunked_attention import ChunkedAttentionFunction, chunked_causal_attention
from mirasol.ops.cross_attention import (CrossAttentionFunction, cross_attention,
                                         cross_attention_padded)
from mirasol.ops.token_pool import TokenPoolFunction, token_pool

__all__ = [
    "BACKENDS", "BackendSpec", "BackendUnavailable", "Call", "Explanation", "Limit", "OPS",
    "Op", "Refusal", "choose_backend", "explain",
    "ChunkedAttentionFunction", "chunked_causal_attention",
    "CrossAttentionFunction", "cross_attention", "cross_attention_padded",
    "TokenPoolFunction", "token_pool",
]
