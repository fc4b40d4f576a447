"""Triton kernels and their launchers (installed as ``mirasol.kernels``).

Triton only: no nn.Module, no autograd, no reference code. Importing this package imports
triton; ``mirasol`` itself imports it lazily, on the first triton-backend call.
"""

from ._launch import KernelConfig, Launch, arch_family, kernel_config
from .attention import (NO_CHUNKS, Segments, attn_bwd, attn_fwd, chunked_attn_bwd,
                        chunked_attn_fwd, cross_attn_bwd, cross_attn_fwd)
from .token_pool import token_pool_bwd, token_pool_fwd


def interpreted() -> bool:
    """True when the kernels were defined under ``TRITON_INTERPRET=1`` (they then run on
    CPU tensors through Triton's interpreter and cannot be compiled for a GPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    from .attention import _attn_fwd_kernel

    return isinstance(_attn_fwd_kernel, InterpretedFunction)


__all__ = [
    "KernelConfig", "Launch", "arch_family", "kernel_config", "interpreted",
    "NO_CHUNKS", "Segments", "attn_fwd", "attn_bwd",
    "chunked_attn_fwd", "chunked_attn_bwd", "cross_attn_fwd", "cross_attn_bwd",
    "token_pool_fwd", "token_pool_bwd",
]
