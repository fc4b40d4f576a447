"""What every launcher shares: tuning configs per GPU generation, the launch record, and
allocation (one place, so tests can poison fresh buffers with NaN).

A launcher builds a :class:`Launch` from tensors alone; real tensors run it, ``meta``
tensors with an explicit ``capability`` cross-compile it for another GPU (see ``aot``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import triton

from ._configs import PER_TRITON as _PER_TRITON, TABLE as _TUNED

# "interpreter" stands for TRITON_INTERPRET=1 on CPU tensors.
Capability = "tuple[int, int] | str"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int = 0
    num_warps: int = 4
    num_stages: int = 2


# The interpreter runs each program serially on numpy: small tiles keep tests fast and
# exercise several blocks per sequence.
_INTERPRETER_CONFIG = KernelConfig(16, 16, 1, 1)

# Kernels not in the tuned table: the NaN repair passes (kernels/attention.py, "NaN"), which
# recompute only rows that hold a NaN. Small unpipelined tiles serve them: their speed
# matters only on a step that has a NaN already, so the CI gate allows them the few bytes of
# spill they have in fp32 at head dim 256 on some archs (mirasol.profile.Record.may_spill).
FIXED_CONFIGS = {
    "attn_fwd_nan": {"half": KernelConfig(16, 16, 4, 1), "fp32": KernelConfig(16, 16, 8, 1)},
    "attn_bwd_dkdv_nan": {"half": KernelConfig(16, 16, 8, 1),
                          "fp32": KernelConfig(16, 16, 8, 1)},
    "attn_bwd_dq_nan": {"half": KernelConfig(16, 16, 4, 1), "fp32": KernelConfig(16, 16, 8, 1)},
}


def arch_family(capability: tuple[int, int]) -> str:
    """The table row a compute capability uses: sm_80 (A100), sm_86/89 (small shared
    memory: A10, RTX 30/40, L4), sm_90 (H100, H200: wgmma), sm_100 and sm_110 (B200:
    tcgen05, whose code takes other registers, so other tiles fit). sm_120 and newer
    (RTX 50, GB10) have no tcgen05 and 99 KiB of shared memory per block: the sm86 row
    (not profiled for them: the tiles fit their shared memory, their registers unchecked)."""
    major, minor = capability
    if major >= 12:
        return "sm86"
    if major >= 10:
        return "sm100"
    if major == 9:
        return "sm90"
    if (major, minor) in ((8, 6), (8, 7), (8, 9)):
        return "sm86"
    return "sm80"


def triton_minor(version: str = triton.__version__) -> str:
    """``major.minor`` of a triton version: the key of the table's per-triton entries."""
    return ".".join(version.split(".")[:2])


def head_block(head_dim: int) -> int:
    """Head dim padded to the power of two the kernel tiles with (masked loads fill the
    padding; inputs are never copied). tl.dot needs at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def device_capability(device: torch.device) -> Capability:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)
    return "interpreter"


_OVERRIDES: dict[str, KernelConfig] = {}


def kernel_config(name: str, head_dim: int, dtype: torch.dtype, capability: Capability,
                  triton_version: str = triton.__version__) -> KernelConfig:
    """The tile config of kernel ``name`` for this head dim, dtype and GPU (see _configs):
    the entry of ``triton_version`` (default: the running triton) where the table has one
    (where no config serves every triton CI tests), else the shared entry."""
    if name in _OVERRIDES:
        return _OVERRIDES[name]
    if capability == "interpreter":
        return _INTERPRETER_CONFIG
    dtype_class = "fp32" if dtype == torch.float32 else "half"
    if name in FIXED_CONFIGS:
        return FIXED_CONFIGS[name][dtype_class]
    family = arch_family(capability)
    bucket = min(h for h in _TUNED[name][family][dtype_class] if h >= head_block(head_dim))
    return KernelConfig(*table_entry(name, family, dtype_class, bucket, triton_version))


def table_entry(name: str, family: str, dtype_class: str, bucket: int,
                triton_version: str | None = triton.__version__) -> tuple | None:
    """The table's (block_m, block_n, num_warps, num_stages) for kernel ``name``, GPU
    family, dtype class ("half", "fp32") and bucket: ``triton_version``'s own entry where
    PER_TRITON has one (None: the shared entry alone), else the shared one; None where the
    table has neither."""
    def entry(table):
        return table.get(name, {}).get(family, {}).get(dtype_class, {}).get(bucket)

    own = entry(_PER_TRITON.get(triton_minor(triton_version), {})) if triton_version else None
    return own or entry(_TUNED)


@contextlib.contextmanager
def override_config(name: str, config: KernelConfig) -> Iterator[None]:
    """Use ``config`` for kernel ``name`` on every device (tests try other tile shapes in
    the interpreter; bench/tune_configs.py tries candidates)."""
    previous = _OVERRIDES.get(name)
    _OVERRIDES[name] = config
    try:
        yield
    finally:
        if previous is None:
            del _OVERRIDES[name]
        else:
            _OVERRIDES[name] = previous


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep the fp32 contract: TF32 would lose 3 decimal digits.
    return "ieee" if dtype == torch.float32 else "tf32"


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an output buffer. Every kernel output goes through here, so
    ``mirasol.testing.poison_allocations`` can fill them with NaN to catch unwritten
    elements."""
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer laid out like ``x`` (its strides kept when x is dense), in
    ``dtype`` (default x's)."""
    return torch.empty_like(x, dtype=dtype)


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
