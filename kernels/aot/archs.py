"""The GPU generations the kernels are cross-compiled for, and their per-SM limits."""

from __future__ import annotations

from dataclasses import dataclass

WARP_SIZE = 32
# The driver keeps this many bytes in every block's shared-memory allocation from sm_80 on
# (cuda_occupancy.h: reservedSharedMemPerBlock).
SHARED_RESERVED_PER_BLOCK = 1024
# A block gets up to this much dynamic shared memory without opting in; past it the
# launcher must raise cudaFuncAttributeMaxDynamicSharedMemorySize first (triton's launcher
# does, and so does the C library).
SHARED_WITHOUT_OPTIN = 48 * 1024


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


ARCHS: dict[int, Arch] = {
    80: Arch("A100", max_threads=2048, max_blocks=32, shared_per_sm=164 * 1024),
    86: Arch("A10, RTX 30", max_threads=1536, max_blocks=16, shared_per_sm=100 * 1024),
    89: Arch("L4, RTX 40", max_threads=1536, max_blocks=24, shared_per_sm=100 * 1024),
    90: Arch("H100, H200", max_threads=2048, max_blocks=32, shared_per_sm=228 * 1024),
    100: Arch("B200", max_threads=2048, max_blocks=32, shared_per_sm=228 * 1024),
}
# The archs the CI gates compile. sm_89 compiles to sm_86's code: the same registers, stack,
# shared memory and tensor-core instructions at every record of bench/results/profile.json
# (228 of 228, triton 3.9; and at the gate's 84 per arch under 3.6), with the same table
# entries (the sm86 family) and the same shared-memory limit; `mirasol profile` still
# compiles it, and tests/test_profile.py fails if a regenerated profile tells them apart.
GATE_ARCHS: tuple[int, ...] = tuple(arch for arch in ARCHS if arch != 89)
