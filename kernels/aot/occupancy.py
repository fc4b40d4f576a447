"""Theoretical occupancy: how many blocks of a compiled kernel one SM holds at once, computed
as CUDA's occupancy calculator does."""

from __future__ import annotations

from dataclasses import dataclass

from .archs import ARCHS, SHARED_RESERVED_PER_BLOCK, WARP_SIZE

# Shared by every target in ARCHS, from CUDA's occupancy calculator (cuda_occupancy.h:
# cudaOccRegAllocationGranularity, cudaOccSubPartitionsPerMultiprocessor,
# cudaOccSMemAllocationGranularity).
REGISTERS_PER_SM = 64 * 1024  # 32-bit registers
REGISTER_SUB_PARTITIONS = 4  # an SM's register file is split between its 4 schedulers
REGISTER_GRANULE = 256  # registers are allocated per warp, in units of 256 (8 per thread)
SHARED_GRANULE = 128  # bytes


def _round_up(x: int, granule: int) -> int:
    return -(-x // granule) * granule


@dataclass(frozen=True)
class Occupancy:
    """How many blocks of a kernel one SM holds at once, and which resources stop it
    holding more."""

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
