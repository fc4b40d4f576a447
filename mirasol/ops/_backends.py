"""Backends and dispatch.

Every op takes ``backend="auto" | "triton" | "torch" | "reference"``. Each backend declares
what it supports as data (:class:`BackendSpec`: dtypes, devices, compute capability and
:class:`Limit` s on the sizes of a call); a concrete call is described by a :class:`Call`.
:func:`choose_backend` serves an explicit request or raises :class:`BackendUnavailable`
listing every :class:`Refusal` — it never falls back silently. ``auto`` takes the first
backend, in declaration order, that may be auto-picked on the call's device and refuses
nothing: triton on CUDA when it can serve the call, else torch. ``MIRASOL_BACKEND``
overrides ``auto`` (and is then held to the same rule as an explicit request).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "torch", "reference")
KERNEL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
ALL_DTYPES = KERNEL_DTYPES | {torch.float64}


def _names(dtypes) -> str:
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


@dataclass(frozen=True)
class Limit:
    """An upper bound a backend puts on one size of a call (``Call.sizes[name]``)."""

    name: str
    maximum: int
    why: str


# The kernels compute element offsets in 32 bits (int32 program ids times int32 strides):
# the largest offset any tensor is addressed at must fit.
ELEMENTS = Limit("elements addressed by one tensor", 2**31,
                 "the kernels compute element offsets in 32 bits")
HEAD_DIM = Limit("head dim", 256, "the kernels hold a row's head dim in one tile")


@dataclass(frozen=True)
class Call:
    """One concrete call as the backends' declarations see it."""

    device: torch.device
    dtype: torch.dtype
    sizes: Mapping[str, int]                  # the sizes a Limit may bound, by name
    capability: tuple[int, int] | None = None  # of a CUDA device

    @classmethod
    def of(cls, t: Tensor, sizes: Mapping[str, int]) -> "Call":
        capability = torch.cuda.get_device_capability(t.device) if t.is_cuda else None
        return cls(t.device, t.dtype, dict(sizes), capability)

    def __str__(self) -> str:
        sizes = ", ".join(f"{name} {value}" for name, value in self.sizes.items())
        cc = "" if self.capability is None else " (compute capability %d.%d)" % self.capability
        return f"{self.device}{cc}, {str(self.dtype).removeprefix('torch.')}, {sizes}"


def span(t: Tensor) -> int:
    """The number of elements from a tensor's first to its last addressed one: its largest
    element offset + 1 (its numel when dense; more for a strided view)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))


@dataclass(frozen=True)
class Refusal:
    """One reason a backend cannot run a call: the limit (``"dtype"``, ``"device"``,
    ``"compute capability"``, ``"triton"`` or a :class:`Limit`'s name), the call's value
    and the explanation."""

    limit: str
    value: object
    message: str

    def __str__(self) -> str:
        return self.message


class BackendUnavailable(RuntimeError):
    """A requested backend cannot serve this call. ``refusals`` holds every reason
    (:class:`Refusal`); ``reason`` joins them; the message says the same."""

    def __init__(self, op: str, backend: str, refusals: tuple[Refusal, ...]):
        self.op, self.backend, self.refusals = op, backend, tuple(refusals)
        super().__init__(f"{op}: backend={backend!r} cannot run this call: {self.reason}")

    @property
    def reason(self) -> str:
        return "; ".join(map(str, self.refusals))

    def __reduce__(self):
        return type(self), (self.op, self.backend, self.refusals)


@dataclass(frozen=True)
class TritonMode:
    """Where Triton kernels run in one mode of the process (fixed once mirasol.kernels is
    imported): the devices, and dtypes excluded there, each with the reason."""

    devices: frozenset[str]
    device_why: str
    excluded_dtypes: frozenset[torch.dtype] = frozenset()
    dtype_why: str = ""


TRITON_MODES = {
    "compiled": TritonMode(
        frozenset({"cuda"}),
        "CPU tensors run only through Triton's interpreter: set TRITON_INTERPRET=1 before "
        "mirasol.kernels is first imported"),
    "interpreted": TritonMode(
        frozenset({"cpu"}),
        "the kernels were defined under TRITON_INTERPRET=1, which runs them on CPU tensors "
        "only",
        frozenset({torch.bfloat16}),
        "the Triton interpreter computes bf16 tl.dot incorrectly; bf16 runs on CUDA only"),
}

_TRITON_STATE: dict[str, str | None] = {}


def triton_mode() -> str | None:
    """None if triton is not installed, else the key of TRITON_MODES that holds."""
    if "mode" not in _TRITON_STATE:
        if importlib.util.find_spec("triton") is None:
            _TRITON_STATE["mode"] = None
        else:
            from mirasol.kernels import interpreted

            _TRITON_STATE["mode"] = "interpreted" if interpreted() else "compiled"
    return _TRITON_STATE["mode"]


@dataclass(frozen=True)
class BackendSpec:
    """What one backend of one op can run, as data."""

    name: str
    dtypes: frozenset[torch.dtype]
    devices: frozenset[str] | None = None          # device types; None: any
    min_capability: tuple[int, int] | None = None  # on CUDA devices
    limits: tuple[Limit, ...] = ()
    auto_devices: frozenset[str] | None = frozenset()  # where auto may pick it; None: any
    triton: bool = False   # runs Triton kernels: needs triton, and the mode it is in
    #                        narrows the devices and dtypes (TRITON_MODES)

    def refusals(self, call: Call) -> tuple[Refusal, ...]:
        """Every reason this backend cannot run ``call`` (empty: it can)."""
        found = []
        mode = None
        if self.triton:
            key = triton_mode()
            if key is None:
                found.append(Refusal("triton", None, "triton is not installed"))
            else:
                mode = TRITON_MODES[key]
        devices = self.devices
        if mode:
            devices = mode.devices if devices is None else devices & mode.devices
        if devices is not None and call.device.type not in devices:
            why = f": {mode.device_why}" if mode else ""
            found.append(Refusal("device", call.device.type,
                                 f"device type {call.device.type!r} is not supported "
                                 f"(supported: {', '.join(sorted(devices))}){why}"))
        if call.dtype not in self.dtypes:
            found.append(Refusal("dtype", call.dtype, f"dtype {call.dtype} is not supported "
                                                      f"(supported: {_names(self.dtypes)})"))
        elif mode and call.dtype in mode.excluded_dtypes:
            found.append(Refusal("dtype", call.dtype, mode.dtype_why))
        cc = call.capability
        if self.min_capability and call.device.type == "cuda" and cc is not None \
                and cc < self.min_capability:
            found.append(Refusal("compute capability", cc,
                                 "compute capability %d.%d is below the required %d.%d"
                                 % (*cc, *self.min_capability)))
        for limit in self.limits:
            value = call.sizes[limit.name]
            if value > limit.maximum:
                found.append(Refusal(limit.name, value,
                                     f"{limit.name} {value} exceeds the maximum of "
                                     f"{limit.maximum} ({limit.why})"))
        return tuple(found)

    def auto_picks_on(self, device: torch.device) -> bool:
        return self.auto_devices is None or device.type in self.auto_devices


def standard_backends(*limits: Limit) -> dict[str, BackendSpec]:
    """The declarations the ops share: the kernels take fp16/bf16/fp32 on sm_80+ within
    32-bit offsets and the op's own ``limits``; the composites and the reference take fp64
    too, on any device, at any size. Order is auto's preference."""
    return {
        "triton": BackendSpec("triton", KERNEL_DTYPES, devices=frozenset({"cuda", "cpu"}),
                              min_capability=(8, 0), limits=(ELEMENTS, *limits),
                              auto_devices=frozenset({"cuda"}), triton=True),
        "torch": BackendSpec("torch", ALL_DTYPES, auto_devices=None),
        "reference": BackendSpec("reference", ALL_DTYPES),
    }


def requested_backend(op: str, backend: str) -> str:
    """``backend``, or for ``"auto"`` the MIRASOL_BACKEND override if set."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        override = os.environ.get("MIRASOL_BACKEND", "auto")
        if override not in BACKENDS:
            raise ValueError(f"MIRASOL_BACKEND must be one of {BACKENDS}, got {override!r}")
        return override
    return backend


def choose_backend(op: str, backend: str, specs: Mapping[str, BackendSpec], call: Call) -> str:
    """The backend that runs this call (see the module docstring for the rule)."""
    requested = requested_backend(op, backend)
    if requested == "auto":
        candidates = [s for s in specs.values() if s.auto_picks_on(call.device)]
        for spec in candidates:
            if not spec.refusals(call):
                return spec.name
        raise BackendUnavailable(op, "auto", tuple(r for s in candidates
                                                   for r in s.refusals(call)))
    refusals = specs[requested].refusals(call)
    if refusals:
        raise BackendUnavailable(op, requested, refusals)
    return requested


@dataclass(frozen=True)
class Explanation:
    """What :func:`mirasol.explain` finds for one call: the backend it runs on (None if
    it would raise), and every reason each backend refuses it."""

    op: str
    call: Call
    requested: str
    chosen: str | None
    refusals: Mapping[str, tuple[Refusal, ...]] = field(default_factory=dict)
    auto_devices: Mapping[str, frozenset[str] | None] = field(default_factory=dict)

    def __str__(self) -> str:
        runs = f"runs on {self.chosen}" if self.chosen else "raises BackendUnavailable"
        lines = [f"{self.op} on {self.call}: backend={self.requested!r} {runs}"]
        override = os.environ.get("MIRASOL_BACKEND")
        if self.requested == "auto" and override:
            lines[0] += f" (MIRASOL_BACKEND={override})"
        width = max(map(len, self.refusals))
        for name, refusals in self.refusals.items():
            if refusals:
                lines.append(f"  {name:<{width}}  refuses:")
                lines += [f"  {'':<{width}}    - {r}" for r in refusals]
                continue
            devices = self.auto_devices[name]
            note = ("" if devices is None else "; auto never picks it" if not devices
                    else f"; auto picks it on {', '.join(sorted(devices))} only")
            lines.append(f"  {name:<{width}}  can run{note}")
        return "\n".join(lines)


def explain_call(op: str, specs: Mapping[str, BackendSpec], call: Call,
                 backend: str = "auto") -> Explanation:
    try:
        chosen = choose_backend(op, backend, specs, call)
    except BackendUnavailable:
        chosen = None
    return Explanation(op, call, backend, chosen,
                       {name: spec.refusals(call) for name, spec in specs.items()},
                       {name: spec.auto_devices for name, spec in specs.items()})
