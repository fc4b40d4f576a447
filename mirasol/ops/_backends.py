"""Backends and dispatch.

Every op takes ``backend="auto" | "triton" | "torch" | "reference"``. Each backend
declares what it supports (devices, dtypes, head dims); :func:`choose_backend` serves an
explicit request or raises :class:`BackendUnavailable` saying why — it never falls back
silently. ``auto`` picks triton on CUDA when it can serve the call, else torch;
``MIRASOL_BACKEND`` overrides ``auto`` (and is then held to the same rule as an explicit
request).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "triton", "torch", "reference")
_HALF = frozenset({torch.float16, torch.bfloat16})


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot serve this call; the message says why."""


@dataclass(frozen=True)
class BackendSpec:
    """What one backend of one op can run."""

    name: str
    dtypes: frozenset[torch.dtype]
    max_size: int | None = None   # a bound on the op's tile dimension,
    size_name: str = "head dim"   # named in refusals

    def why_not(self, device: torch.device, dtype: torch.dtype, size: int) -> str | None:
        """None if this backend can run the call, else the reason it cannot."""
        if dtype not in self.dtypes:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.dtypes))
            return f"dtype {dtype} is not supported (supported: {names})"
        if self.max_size is not None and size > self.max_size:
            return f"{self.size_name} {size} exceeds the maximum of {self.max_size}"
        if self.name == "triton":
            return _triton_why_not(device, dtype)
        return None


_TRITON_STATE: dict[str, bool | None] = {}


def _triton_interpreted() -> bool | None:
    """None if triton is not installed, else whether its kernels run interpreted (fixed
    for the process once the kernels are imported)."""
    if "interpreted" not in _TRITON_STATE:
        if importlib.util.find_spec("triton") is None:
            _TRITON_STATE["interpreted"] = None
        else:
            from mirasol.kernels import interpreted

            _TRITON_STATE["interpreted"] = interpreted()
    return _TRITON_STATE["interpreted"]


def _triton_why_not(device: torch.device, dtype: torch.dtype) -> str | None:
    interpreted = _triton_interpreted()
    if interpreted is None:
        return "triton is not installed"
    if device.type == "cuda":
        if interpreted:
            return ("the kernels were defined under TRITON_INTERPRET=1, which runs them on "
                    "CPU tensors only")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"compute capability {major}.{minor} is below the required 8.0 (Ampere)"
        return None
    if device.type == "cpu":
        if not interpreted:
            return ("CPU tensors run only through Triton's interpreter: set TRITON_INTERPRET=1 "
                    "before mirasol.kernels is first imported")
        if dtype == torch.bfloat16:
            return ("the Triton interpreter computes bf16 tl.dot incorrectly; bf16 runs on "
                    "CUDA only")
        return None
    return f"device type {device.type!r} is not supported (CUDA, or CPU under the interpreter)"


def standard_backends(max_size: int = 256, size_name: str = "head dim"
                      ) -> dict[str, BackendSpec]:
    """The declarations the ops share: the kernels take fp16/bf16/fp32 and bound one tile
    dimension (the head dim for attention); the composites and the reference take fp64
    too and any size."""
    return {
        "triton": BackendSpec("triton", _HALF | {torch.float32}, max_size, size_name),
        "torch": BackendSpec("torch", _HALF | {torch.float32, torch.float64}),
        "reference": BackendSpec("reference", _HALF | {torch.float32, torch.float64}),
    }


def choose_backend(op: str, requested: str, specs: dict[str, BackendSpec],
                   device: torch.device, dtype: torch.dtype, size: int) -> str:
    """The backend that runs this call (see the module docstring for the rule)."""
    if requested not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "auto":
        override = os.environ.get("MIRASOL_BACKEND", "auto")
        if override not in BACKENDS:
            raise ValueError(f"MIRASOL_BACKEND must be one of {BACKENDS}, got {override!r}")
        requested = override
    if requested == "auto":
        if device.type == "cuda" and specs["triton"].why_not(device, dtype, size) is None:
            return "triton"
        requested = "torch"
    why = specs[requested].why_not(device, dtype, size)
    if why is not None:
        raise BackendUnavailable(f"{op}: backend={requested!r} cannot run this call: {why}")
    return requested
