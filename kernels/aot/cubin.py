"""What a compiled kernel uses on its target, read off the cubin by triton's bundled
``cuobjdump``: registers, shared memory, spills (``--dump-resource-usage``), the tensor-core
instructions in the SASS (``--dump-sass``), and the kernel parameters' sizes (``-elf``)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

import triton

from .._launch import Launch
from . import cache
from .compiler import cache_key, compile_source, source, specialize
from .occupancy import Occupancy, occupancy

# Tensor-core matrix instructions by generation: mma.sync (HMMA) from sm_80, warpgroup
# wgmma (HGMMA) on sm_90, tcgen05 (UTCHMMA and friends) on sm_100.
_TENSOR_CORE_OPS = re.compile(r"\b(HMMA|HGMMA|UTC\w*MMA|IMMA|DMMA)\b")


@dataclass(frozen=True)
class Resources:
    """What the compiled kernel uses on ``sm_<arch>``: registers per thread, shared bytes
    per block (static + dynamic), the stack frame and local memory per thread in bytes
    (both 0 unless registers spilled), and the count of tensor-core instructions in its
    SASS, by mnemonic; ``key``, the compile's key (:func:`resources`)."""

    arch: int
    registers: int
    shared_bytes: int
    stack_bytes: int
    local_bytes: int
    tensor_core_ops: dict[str, int]
    num_warps: int
    key: str  # the compile key: triton's cache key and the reader's version

    @property
    def spills(self) -> bool:
        # ptxas reports spills as a stack frame; LOCAL stays 0 for them.
        return self.stack_bytes > 0 or self.local_bytes > 0

    @property
    def occupancy(self) -> Occupancy:
        return occupancy(self.arch, self.num_warps, self.registers, self.shared_bytes)


def cuobjdump(*args: str) -> str:
    """The output of triton's bundled cuobjdump with these arguments."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


def _read(compiled) -> dict:
    """The resource fields of :class:`Resources` read off a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = cuobjdump("--dump-resource-usage", f.name)
        sass = cuobjdump("--dump-sass", f.name)

    def field(name: str) -> int:
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    return dict(registers=field("REG"), shared_bytes=field("SHARED") + compiled.metadata.shared,
                stack_bytes=field("STACK"), local_bytes=field("LOCAL"),
                tensor_core_ops=dict(Counter(_TENSOR_CORE_OPS.findall(sass))))


# The reader's version, in every compile key: what reads the resources off a cubin.
_VERSION = cache.code_version(cuobjdump, _read, _TENSOR_CORE_OPS.pattern)


def resources(launch: Launch, arch: int, known: dict[str, dict] | None = None) -> Resources:
    """Compile ``launch`` for ``sm_<arch>`` and read the cubin's resource usage and SASS:
    once per compile key across processes (see ``cache``), or not at all where ``known``
    (``Resources.key`` -> the fields read, e.g. a committed profile's) has the key. The key
    is triton's cache key (kernel source, specialization, options, target, triton and its
    ptxas) and this reader's version: equal keys, equal resources."""
    spec = specialize(launch, arch)
    triton_key = cache_key(source(launch, *spec[:3]), arch, spec[3])
    key = f"{triton_key}-{_VERSION}"
    if known and key in known:
        read = known[key]
    else:
        read = cache.stored(triton_key, f"resources-{_VERSION}",
                            lambda: _read(compile_source(launch, arch, *spec)))
    return Resources(arch=arch, num_warps=launch.config.num_warps, key=key, **read)


def param_sizes(cubin_path: str) -> list[int]:
    """Byte sizes of a cubin's kernel parameters by ordinal (EIATTR_KPARAM_INFO)."""
    elf = cuobjdump("-elf", cubin_path)
    params = {int(o, 16): int(size, 16) for o, size in
              re.findall(r"Ordinal\s*:\s*(0x[0-9a-f]+)\s+Offset\s*:\s*0x[0-9a-f]+\s+"
                         r"Size\s*:\s*(0x[0-9a-f]+)", elf)}
    if sorted(params) != list(range(len(params))):
        raise ValueError(f"{cubin_path}: parameter ordinals {sorted(params)} are not "
                         f"0..{len(params) - 1}")
    return [params[i] for i in range(len(params))]
