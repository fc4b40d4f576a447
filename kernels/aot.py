"""Cross-compile a launch for a CUDA target without a GPU, and read the cubin's resources.

``triton.compile`` with a ``GPUTarget`` yields PTX and a cubin for any sm_XX on a machine
with no driver; triton's bundled ``cuobjdump`` reports registers, shared memory and spills,
and the SASS shows which tensor-core instructions were used. Must run in a process where
``TRITON_INTERPRET`` is unset (under the interpreter ``@triton.jit`` yields functions that
cannot be compiled).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import create_function_from_signature

from ._launch import Launch

# Tensor-core matrix instructions by generation: mma.sync (HMMA) from sm_80, warpgroup
# wgmma (HGMMA) on sm_90, tcgen05 (UTCHMMA and friends) on sm_100.
_TENSOR_CORE_OPS = re.compile(r"\b(HMMA|HGMMA|UTC\w*MMA|IMMA|DMMA)\b")


@dataclass(frozen=True)
class Resources:
    arch: int
    registers: int
    shared_bytes: int
    stack_bytes: int
    local_bytes: int
    tensor_core_ops: int
    num_warps: int

    @property
    def spills(self) -> bool:
        # ptxas reports spills as a stack frame; LOCAL stays 0 for them.
        return self.stack_bytes > 0 or self.local_bytes > 0


def compile_launch(launch: Launch, arch: int):
    """Compile ``launch`` (built from meta tensors) for ``sm_<arch>``; returns triton's
    compiled kernel (``.asm['cubin']``, ``.asm['ptx']``, ``.metadata``).

    Specializes the arguments as a real launch would (integers equal to 1 become
    constants, pointers and integers divisible by 16 get the divisibility hint that
    enables vectorized loads), so the code is what the GPU would run.
    """
    fn = launch.kernel
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs = dict(launch.constexprs, num_warps=launch.config.num_warps,
                  num_stages=launch.config.num_stages)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args,
                                                          specialization, options)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")


def resources(launch: Launch, arch: int) -> Resources:
    compiled = compile_launch(launch, arch)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                               check=True, capture_output=True, text=True).stdout
        sass = subprocess.run([_cuobjdump(), "--dump-sass", f.name],
                              check=True, capture_output=True, text=True).stdout

    def field(name: str) -> int:
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    return Resources(arch=arch, registers=field("REG"),
                     shared_bytes=field("SHARED") + compiled.metadata.shared,
                     stack_bytes=field("STACK"), local_bytes=field("LOCAL"),
                     tensor_core_ops=len(_TENSOR_CORE_OPS.findall(sass)),
                     num_warps=launch.config.num_warps)


VARIANTS = ("chunked", "cross", "cross-causal")


def attention_launches(capability: tuple[int, int], dtype: torch.dtype, head_dim: int,
                       variant: str = "chunked", *, batch: int = 2, heads: int = 8,
                       kv_heads: int = 2, seqlen: int = 4096) -> dict[str, Launch]:
    """Every kernel launch of one attention forward + backward on meta tensors, with the
    configs ``capability`` selects. Variants (each a different specialization of the same
    kernels): "chunked" (padded samples with lengths, chunk 256), "cross" (packed segments,
    cu_seqlens), "cross-causal" (packed, bottom-right causal). Grouped-query heads."""
    from .attention import (NO_CHUNKS, Segments, attn_bwd_delta_launch, attn_bwd_dkdv_launch,
                            attn_bwd_dq_launch, attn_fwd_launch)

    def meta(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    if variant == "chunked":
        rows, lse_rows = (batch, seqlen), (batch,)
        lengths = meta(batch, dt=torch.int32)
        seg = Segments(max_q=seqlen, max_k=seqlen, chunk=256, q_lens=lengths, k_lens=lengths)
    elif variant in ("cross", "cross-causal"):
        rows, lse_rows = (1, batch * seqlen), (1,)
        cu = meta(batch + 1, dt=torch.int32)
        causal = variant == "cross-causal"
        seg = Segments(max_q=seqlen, max_k=seqlen, chunk=1 if causal else NO_CHUNKS,
                       causal=causal, cu_q=cu, cu_k=cu)
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    q, do, o, dq = (meta(rows[0], heads, rows[1], head_dim) for _ in range(4))
    k, v, dk, dv = (meta(rows[0], kv_heads, rows[1], head_dim) for _ in range(4))
    lse, delta = (meta(*lse_rows, heads, rows[1], dt=torch.float32) for _ in range(2))
    scale = head_dim ** -0.5
    return {
        "attn_fwd": attn_fwd_launch(q, k, v, o, lse, seg, scale, capability=capability),
        "attn_bwd_delta": attn_bwd_delta_launch(o, do, delta, capability=capability),
        "attn_bwd_dkdv": attn_bwd_dkdv_launch(q, k, v, do, lse, delta, dk, dv, seg, scale,
                                              capability=capability),
        "attn_bwd_dq": attn_bwd_dq_launch(q, k, v, do, lse, delta, dq, seg, scale,
                                          capability=capability),
    }


TOKEN_POOL_VARIANTS = ("padded", "packed")


def token_pool_launches(capability: tuple[int, int], dtype: torch.dtype, num_tokens: int,
                        variant: str = "padded", *, segments: int = 64, tokens: int = 600,
                        dim: int = 512) -> dict[str, Launch]:
    """The token-pooling forward and backward launches on meta tensors: "padded" (with
    lengths) or "packed" (cu_seqlens) segments of a Combiner-sized problem."""
    from .token_pool import token_pool_bwd_launch, token_pool_fwd_launch

    def meta(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    if variant == "padded":
        rows, cu, lengths = (segments, tokens), None, meta(segments, dt=torch.int32)
    elif variant == "packed":
        rows, cu, lengths = (segments * tokens,), meta(segments + 1, dt=torch.int32), None
    else:
        raise ValueError(f"variant must be one of {TOKEN_POOL_VARIANTS}, got {variant!r}")
    x, dx = meta(*rows, dim), meta(*rows, dim)
    logits, dlogits = meta(*rows, num_tokens), meta(*rows, num_tokens)
    out, dout = meta(segments, num_tokens, dim), meta(segments, num_tokens, dim)
    stats = meta(segments, 2, num_tokens, dt=torch.float32)
    return {
        "token_pool_fwd": token_pool_fwd_launch(x, logits, out, stats, cu, lengths,
                                                capability=capability),
        "token_pool_bwd": token_pool_bwd_launch(x, logits, out, dout, stats, dx, dlogits, cu,
                                                lengths, tokens, capability=capability),
    }
