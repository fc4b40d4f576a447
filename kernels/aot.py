"""Cross-compile a launch for a CUDA target without a GPU, and read the cubin's resources.

``triton.compile`` with a ``GPUTarget`` yields PTX and a cubin for any sm_XX on a machine
with no driver; triton's bundled ``cuobjdump`` reports registers, shared memory and spills,
and the SASS shows which tensor-core instructions were used. Must run in a process where
``TRITON_INTERPRET`` is unset (under the interpreter ``@triton.jit`` yields functions that
cannot be compiled).

Also the per-SM limits of each target generation (:data:`ARCHS`) and the theoretical
occupancy they allow a compiled kernel (:func:`occupancy`), and the launches of every op
(:data:`OPS`), which ``mirasol profile``, the cross-compile test and bench/tune_configs.py
enumerate.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Callable

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
class Arch:
    """The per-SM limits of one compute capability that bound how many blocks of a kernel
    are resident at once: the CUDA C++ Programming Guide's "Technical Specifications per
    Compute Capability" table, checked against NVIDIA's own encoding of it in CCCL
    (libcudacxx/include/cuda/__device/arch_traits.h: max_threads_per_multiprocessor,
    max_blocks_per_multiprocessor, max_shared_memory_per_multiprocessor, and
    max_shared_memory_per_block_optin = that minus the 1 KiB reserved per block)."""

    gpus: str  # examples of this generation, for tables
    max_threads: int  # resident threads per SM
    max_blocks: int  # resident blocks per SM
    shared_per_sm: int  # bytes, at the largest shared-memory carveout

    @property
    def max_warps(self) -> int:
        return self.max_threads // WARP_SIZE

    @property
    def shared_per_block(self) -> int:
        """Bytes of shared memory one block may use (the opt-in maximum a launcher gets
        with cudaFuncAttributeMaxDynamicSharedMemorySize, as triton's does)."""
        return self.shared_per_sm - SHARED_RESERVED_PER_BLOCK


WARP_SIZE = 32
# Shared by every target below, from CUDA's occupancy calculator (cuda_occupancy.h:
# cudaOccRegAllocationGranularity, cudaOccSubPartitionsPerMultiprocessor,
# cudaOccSMemAllocationGranularity, and its reservedSharedMemPerBlock from sm_80 on).
REGISTERS_PER_SM = 64 * 1024  # 32-bit registers
REGISTER_SUB_PARTITIONS = 4  # an SM's register file is split between its 4 schedulers
REGISTER_GRANULE = 256  # registers are allocated per warp, in units of 256 (8 per thread)
SHARED_GRANULE = 128  # bytes
SHARED_RESERVED_PER_BLOCK = 1024  # bytes the driver keeps in every block's allocation

ARCHS: dict[int, Arch] = {
    80: Arch("A100", max_threads=2048, max_blocks=32, shared_per_sm=164 * 1024),
    86: Arch("A10, RTX 30", max_threads=1536, max_blocks=16, shared_per_sm=100 * 1024),
    89: Arch("L4, RTX 40", max_threads=1536, max_blocks=24, shared_per_sm=100 * 1024),
    90: Arch("H100, H200", max_threads=2048, max_blocks=32, shared_per_sm=228 * 1024),
    100: Arch("B200", max_threads=2048, max_blocks=32, shared_per_sm=228 * 1024),
}


def _round_up(x: int, granule: int) -> int:
    return -(-x // granule) * granule


@dataclass(frozen=True)
class Occupancy:
    """Theoretical occupancy: how many blocks of a kernel one SM holds at once, and which
    resources stop it holding more."""

    blocks: int  # resident blocks per SM (0: a block does not fit at all)
    warps: int  # resident warps per SM
    max_warps: int  # the SM's limit
    limiters: tuple[str, ...]  # those of "registers", "shared", "threads", "blocks" that bind


def occupancy(arch: int, num_warps: int, registers: int, shared_bytes: int) -> Occupancy:
    """Theoretical occupancy of a block of ``num_warps`` warps using ``registers`` per
    thread and ``shared_bytes`` of shared memory (static + dynamic) on ``sm_<arch>``,
    computed as CUDA's occupancy calculator does (cudaOccMaxActiveBlocksPerMultiprocessor
    at the largest shared-memory carveout): the least of the blocks per SM allowed by

    - registers: a warp takes ``registers * 32`` rounded up to 256; each of the 4
      sub-partitions holds 16K registers' worth of whole warps;
    - shared memory: a block takes ``shared_bytes`` + 1 KiB reserved, rounded up to
      128 bytes; none fits above the per-block opt-in maximum;
    - threads and blocks per SM.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if num_warps < 1 or not 1 <= registers <= 255 or shared_bytes < 0:
        raise ValueError("expected num_warps >= 1, 1 <= registers <= 255 and shared_bytes "
                         f">= 0, got {num_warps}, {registers}, {shared_bytes}")
    spec = ARCHS[arch]
    regs_per_warp = _round_up(registers * WARP_SIZE, REGISTER_GRANULE)
    # The hardware checks a block against the register file as if its warps were spread
    # evenly over the sub-partitions (cuda_occupancy.h: regsAssumedPerCTA).
    if regs_per_warp * _round_up(num_warps, REGISTER_SUB_PARTITIONS) > REGISTERS_PER_SM:
        by_registers = 0
    else:
        warps_per_partition = REGISTERS_PER_SM // REGISTER_SUB_PARTITIONS // regs_per_warp
        by_registers = warps_per_partition * REGISTER_SUB_PARTITIONS // num_warps
    if shared_bytes > spec.shared_per_block:
        by_shared = 0
    else:
        by_shared = spec.shared_per_sm // _round_up(shared_bytes + SHARED_RESERVED_PER_BLOCK,
                                                    SHARED_GRANULE)
    limits = {"registers": by_registers, "shared": by_shared,
              "threads": spec.max_warps // num_warps, "blocks": spec.max_blocks}
    blocks = min(limits.values())
    return Occupancy(blocks=blocks, warps=blocks * num_warps, max_warps=spec.max_warps,
                     limiters=tuple(k for k, v in limits.items() if v == blocks))


@dataclass(frozen=True)
class Resources:
    """What the compiled kernel uses on ``sm_<arch>``: registers per thread, shared bytes
    per block (static + dynamic), the stack frame and local memory per thread in bytes
    (both 0 unless registers spilled), and the count of tensor-core instructions in its
    SASS, by mnemonic."""

    arch: int
    registers: int
    shared_bytes: int
    stack_bytes: int
    local_bytes: int
    tensor_core_ops: dict[str, int]
    num_warps: int

    @property
    def spills(self) -> bool:
        # ptxas reports spills as a stack frame; LOCAL stays 0 for them.
        return self.stack_bytes > 0 or self.local_bytes > 0

    @property
    def occupancy(self) -> Occupancy:
        return occupancy(self.arch, self.num_warps, self.registers, self.shared_bytes)


def specialize(launch: Launch, arch: int):
    """``(signature, constexprs, attrs, options)`` of ``launch`` for ``sm_<arch>``, as
    triton's JIT would specialize a real launch with these argument values: integers equal
    to 1 become constants, pointers and integers divisible by 16 get the divisibility hint
    that enables vectorized loads."""
    fn = launch.kernel
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs = dict(launch.constexprs, num_warps=launch.config.num_warps,
                  num_stages=launch.config.num_stages)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args,
                                                          specialization, options)
    return signature, constexprs, attrs, options


def compile_source(launch: Launch, arch: int, signature, constexprs, attrs, options):
    """Compile ``launch``'s kernel with this specialization for ``sm_<arch>``; returns
    triton's compiled kernel (``.asm['cubin']``, ``.asm['ptx']``, ``.metadata``)."""
    src = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)


def compile_launch(launch: Launch, arch: int):
    """Compile ``launch`` (built from meta tensors) for ``sm_<arch>``, specialized as a real
    launch with its argument values would be, so the code is what the GPU would run."""
    return compile_source(launch, arch, *specialize(launch, arch))


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")


def resources(launch: Launch, arch: int) -> Resources:
    """Compile ``launch`` for ``sm_<arch>`` and read the cubin's resource usage and SASS."""
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
                     tensor_core_ops=dict(Counter(_TENSOR_CORE_OPS.findall(sass))),
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


@dataclass(frozen=True)
class Op:
    """The kernels of one op (forward and backward) and how to build their launches.

    ``launches(capability, dtype, size, variant)`` returns every kernel launch of the op
    by name; ``size`` is the dimension the tuning table is keyed by (attention: the head
    dim; token pooling: the number of output tokens), and ``buckets`` its table keys.
    """

    launches: Callable[..., dict[str, Launch]]
    kernels: tuple[str, ...]
    variants: tuple[str, ...]
    size_name: str
    buckets: tuple[int, ...]
    # Kernels whose code is the same in every variant (compile them once), and kernels
    # with no tl.dot (no tensor-core instructions to expect).
    variant_free: tuple[str, ...] = ()
    dot_free: tuple[str, ...] = ()


OPS: dict[str, Op] = {
    "attention": Op(attention_launches,
                    ("attn_fwd", "attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq"), VARIANTS,
                    "head_dim", (64, 128, 256), variant_free=("attn_bwd_delta",),
                    dot_free=("attn_bwd_delta",)),
    "token_pool": Op(token_pool_launches, ("token_pool_fwd", "token_pool_bwd"),
                     TOKEN_POOL_VARIANTS, "tokens", (16, 32, 64)),
}
KERNELS: dict[str, str] = {kernel: name for name, op in OPS.items() for kernel in op.kernels}
