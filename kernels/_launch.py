"""What every launcher shares: tuning configs per GPU generation, the launch record, and
allocation (one place, so tests can poison fresh buffers with NaN).

A launcher builds a :class:`Launch` from tensors alone; real tensors run it, ``meta``
tensors with an explicit ``capability`` cross-compile it for another GPU (see ``aot``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import triton

# "interpreter" stands for TRITON_INTERPRET=1 on CPU tensors.
Capability = "tuple[int, int] | str"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int = 0
    num_warps: int = 4
    num_stages: int = 2


# Configs by kernel, then by bytes per head row (head_dim padded to a power of two,
# times the element size): the tile's register and shared-memory footprint scales with
# that, not with the head dim alone. Chosen so that every config compiles with no
# register spills within the arch's shared memory (checked in tests/test_cross_compile.py):
# sm_86/sm_89 have 100 KB of shared memory per SM against sm_80's 164 KB and sm_90's 228 KB.
_ROW_BYTES = (128, 256, 512, 1024)
_TABLE: dict[str, dict[str, tuple[KernelConfig, ...]]] = {
    "chunked_attn_fwd": {
        "sm80": (KernelConfig(128, 64, 4, 3), KernelConfig(128, 64, 8, 3),
                 KernelConfig(64, 64, 4, 2), KernelConfig(64, 32, 4, 2)),
        "sm86": (KernelConfig(128, 64, 4, 3), KernelConfig(128, 32, 8, 2),
                 KernelConfig(64, 32, 4, 2), KernelConfig(64, 16, 4, 1)),
        "sm90": (KernelConfig(128, 128, 8, 3), KernelConfig(128, 64, 8, 3),
                 KernelConfig(128, 64, 8, 2), KernelConfig(64, 32, 4, 2)),
    },
    "chunked_attn_bwd_dkdv": {  # block_n: keys per program, block_m: queries per step
        "sm80": (KernelConfig(32, 128, 4, 3), KernelConfig(32, 64, 4, 2),
                 KernelConfig(32, 64, 8, 2), KernelConfig(16, 32, 4, 1)),
        "sm86": (KernelConfig(32, 64, 4, 2), KernelConfig(32, 64, 4, 2),
                 KernelConfig(16, 64, 8, 1), KernelConfig(16, 32, 4, 1)),
        "sm90": (KernelConfig(64, 128, 8, 3), KernelConfig(64, 128, 8, 2),
                 KernelConfig(32, 64, 8, 2), KernelConfig(16, 32, 4, 1)),
    },
    "chunked_attn_bwd_dq": {
        "sm80": (KernelConfig(128, 32, 4, 3), KernelConfig(64, 32, 4, 2),
                 KernelConfig(64, 32, 8, 2), KernelConfig(32, 16, 4, 1)),
        "sm86": (KernelConfig(64, 32, 4, 2), KernelConfig(64, 32, 4, 2),
                 KernelConfig(64, 16, 8, 1), KernelConfig(32, 16, 4, 1)),
        "sm90": (KernelConfig(128, 64, 8, 3), KernelConfig(128, 64, 8, 2),
                 KernelConfig(64, 32, 8, 2), KernelConfig(32, 16, 4, 1)),
    },
    "attn_bwd_delta": {
        arch: tuple(KernelConfig(64, 0, 4, 1) for _ in _ROW_BYTES)
        for arch in ("sm80", "sm86", "sm90")
    },
}

# The interpreter runs each program serially on numpy: small tiles keep tests fast and
# exercise several blocks per sequence.
_INTERPRETER_CONFIG = KernelConfig(16, 16, 1, 1)


def arch_family(capability: tuple[int, int]) -> str:
    """The table row a compute capability uses: sm_80 (A100), sm_86/89 (small shared
    memory: A10, RTX 30/40, L4), sm_90 and newer (H100, B200)."""
    major, minor = capability
    if major >= 9:
        return "sm90"
    if (major, minor) in ((8, 6), (8, 7), (8, 9)):
        return "sm86"
    return "sm80"


def head_block(head_dim: int) -> int:
    """Head dim padded to the power of two the kernel tiles with (masked loads fill the
    padding; inputs are never copied). tl.dot needs at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def device_capability(device: torch.device) -> Capability:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)
    return "interpreter"


def kernel_config(name: str, head_dim: int, dtype: torch.dtype,
                  capability: Capability) -> KernelConfig:
    if capability == "interpreter":
        return _INTERPRETER_CONFIG
    row_bytes = head_block(head_dim) * dtype.itemsize
    bucket = next(i for i, limit in enumerate(_ROW_BYTES) if row_bytes <= limit)
    return _TABLE[name][arch_family(capability)][bucket]


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep the fp32 contract: TF32 would lose 3 decimal digits.
    return "ieee" if dtype == torch.float32 else "tf32"


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an output buffer. Every kernel output goes through here, so
    ``mirasol.testing.poison_allocations`` can fill them with NaN to catch unwritten
    elements."""
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass
class Launch:
    """One kernel launch: the kernel, its grid, positional runtime args, constexprs and
    the tuning config (num_warps / num_stages)."""

    kernel: Callable
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any] = field(default_factory=dict)
    config: KernelConfig = _INTERPRETER_CONFIG

    def run(self) -> None:
        if 0 in self.grid:  # nothing to compute (and Triton rejects empty grids)
            return
        self.kernel[self.grid](*self.args, **self.constexprs,
                               num_warps=self.config.num_warps,
                               num_stages=self.config.num_stages)
