"""The cards' dense 16-bit tensor-core peaks, for TFLOP/s as a fraction of the card's."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peak:
    """The card's dense tensor-core peak for one dtype, or why there is none."""
    tflops: float | None   # TFLOP/s; None: unknown card or dtype, so fractions are "n/a"
    note: str              # the matched entry and its source, or the reason for n/a


# Dense (no 2:4 sparsity) fp16/bf16 tensor-core peaks with fp32 accumulation, TFLOP/s, keyed by
# a pattern of torch.cuda.get_device_name(); the first match wins, so variants come before
# the plain name, and word boundaries keep A10 from matching A100 and L4 from L40S. NVIDIA's
# datasheets print the sparse figure: the dense one is half.
#   A100 SXM/PCIe: A100 datasheet, BF16/FP16 312 (624 sparse), both form factors.
#   H100 SXM / PCIe / NVL: H100 datasheet, 1,979 / 1,513 / 1,671 sparse.
#   H200 (SXM): H200 datasheet, 1,979 sparse (the H200 NVL card is lower: not listed).
#   L4: L4 datasheet, FP16 242 sparse.  A10: A10 datasheet, BF16 125 (250 sparse).
#   L40S: L40S datasheet, BF16 362.05 (733 sparse).
#   GeForce RTX 4090: Ada architecture whitepaper, FP16 with FP32 accumulate 165.2 (330.4
#   sparse); the RTX 4090 D is cut down: not listed.
#   B200 (HGX, 1000 W): HGX B200 datasheet, FP16/BF16 4.5 PFLOPS sparse.
PEAKS_16BIT: tuple[tuple[str, float, str], ...] = (
    (r"\bA100\b", 312.0, "A100 (NVIDIA A100 datasheet)"),
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe (NVIDIA H100 datasheet)"),
    (r"\bH100\b.*\bNVL\b", 835.0, "H100 NVL (NVIDIA H100 datasheet)"),
    (r"\bH100\b.*\b(SXM|HBM3)\b", 989.0, "H100 SXM (NVIDIA H100 datasheet)"),
    (r"\bH200\b(?!.*\bNVL\b)", 989.0, "H200 SXM (NVIDIA H200 datasheet)"),
    (r"\bL4\b", 121.0, "L4 (NVIDIA L4 datasheet)"),
    (r"\bA10\b", 125.0, "A10 (NVIDIA A10 datasheet)"),
    (r"\bL40S\b", 362.0, "L40S (NVIDIA L40S datasheet)"),
    (r"\bRTX 4090\b(?! D\b)", 165.0, "GeForce RTX 4090 (NVIDIA Ada architecture whitepaper)"),
    (r"\bB200\b", 2250.0, "B200 HGX (NVIDIA HGX B200 datasheet)"),
)


def card_peak(device_name: str, dtype: torch.dtype) -> Peak:
    """The dense tensor-core peak of the card named ``device_name`` (as
    ``torch.cuda.get_device_name()`` spells it) for inputs of ``dtype``: known for fp16 and
    bf16 on the cards of :data:`PEAKS_16BIT`, otherwise n/a with the reason (never a guess)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return Peak(None, f"no peak for {str(dtype).removeprefix('torch.')} inputs: the table "
                          "holds dense 16-bit tensor-core peaks")
    for pattern, tflops, source in PEAKS_16BIT:
        if re.search(pattern, device_name, re.IGNORECASE):
            return Peak(tflops, f"{tflops:g} TFLOP/s dense 16-bit tensor core, {source}")
    return Peak(None, f"{device_name!r} is not in mirasol.benchmark.PEAKS_16BIT: no fraction "
                      "rather than a guess")


def card_slug(device_name: str) -> str:
    """A file name for the card: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"

