"""``mirasol check``: parity of every op and backend the machine can run, at small shapes,
as one table; a non-zero exit if any check fails. Backends that cannot run here are listed
with the reason; on CUDA a triton row skipped in a dtype the kernels declare fails."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from mirasol._format import format_rows
from mirasol.ops import (OPS, chunked_causal_attention, cross_attention, cross_attention_padded,
                         explain, token_pool)
from mirasol.testing.cases import AttentionCase, CrossAttentionCase, TokenPoolCase
from mirasol.testing.parity import compare_with_oracle

# Small problems that still cross tile and chunk boundaries: grouped heads, lengths that
# are not multiples of anything, one token per chunk, one chunk, non-power-of-two heads,
# empty segments, more queries than keys under causality.
CHUNKED_CASES = (
    AttentionCase(2, 4, 2, 70, 40, 16, (70, 33), torch.float32, "contiguous", 1),
    AttentionCase(1, 2, 2, 37, 64, 1, None, torch.float32, "bnhd", 2),
    AttentionCase(2, 2, 1, 45, 80, 64, (1, 45), torch.float32, "padded", 3),
)
TOKEN_POOL_CASES = (
    TokenPoolCase((40, 0, 1, 17), 48, 8, 1.0, torch.float32, 6),
    TokenPoolCase((33,), 100, 1, 1000.0, torch.float32, 7),
)
CROSS_CASES = (
    CrossAttentionCase((5, 0, 33), (40, 7, 0), 4, 2, 64, False, torch.float32, 4),
    CrossAttentionCase((20, 6, 1), (5, 6, 17), 2, 2, 96, True, torch.float32, 5),
)


def _chunked(case: AttentionCase, device):
    q, k, v, lengths = case.tensors(device)
    return (q, k, v), dict(chunk_size=case.chunk_size, lengths=lengths), "qkv"


def _cross_packed(case: CrossAttentionCase, device):
    q, k, v, cu_q, cu_k = case.packed(device)
    return (q, k, v), dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=case.causal), "qkv"


def _cross_padded(case: CrossAttentionCase, device):
    q, k, v, k_lengths = case.padded(device)
    return (q, k, v), dict(k_lengths=k_lengths, causal=case.causal), "qkv"


def _token_pool(case: TokenPoolCase, device):
    x, logits, cu = case.packed(device)
    return (x, logits), dict(cu_seqlens=cu), ("x", "logits")


# op name -> (the functional, how one case becomes its (inputs, keyword arguments, input
# names), the cases)
CHECKS = {
    "chunked_causal_attention": (chunked_causal_attention, _chunked, CHUNKED_CASES),
    "cross_attention": (cross_attention, _cross_packed, CROSS_CASES),
    "cross_attention_padded": (cross_attention_padded, _cross_padded, CROSS_CASES),
    "token_pool": (token_pool, _token_pool, TOKEN_POOL_CASES),
}


@dataclass
class CheckRow:
    op: str
    backend: str
    dtype: torch.dtype
    cases: int
    worst_ratio: float | None  # max over cases and tensors of err / allowed
    skipped: str = ""          # why the backend refused a case (then nothing ran)
    required: bool = False     # a skip fails: triton on CUDA in a dtype it declares

    @property
    def ok(self) -> bool:
        if self.skipped:
            return not self.required
        return self.worst_ratio is not None and self.worst_ratio <= 1.0


def _required(op: str, backend: str, dtype: torch.dtype, device: torch.device) -> bool:
    """On CUDA the kernels must run in every dtype they declare: a suite that skipped
    them would pass without testing triton."""
    return (device.type == "cuda" and backend == "triton"
            and dtype in OPS[op].backends["triton"].dtypes)


def check_row(op: str, backend: str, dtype: torch.dtype, device: torch.device,
              quick: bool = False) -> CheckRow:
    """One row of the table: ``op`` on ``backend`` in ``dtype`` over its cases, or only the
    first with ``quick`` (the GPU suite runs the rows one at a time, saving each)."""
    fn, build, cases = CHECKS[op]
    cases = [replace(case, dtype=dtype) for case in cases[:1 if quick else None]]
    problems = [build(case, device) for case in cases]
    for inputs, kwargs, _ in problems:
        refusals = explain(op, *inputs, **kwargs).refusals[backend]
        if refusals:
            return CheckRow(op, backend, dtype, 0, None, "; ".join(map(str, refusals)),
                            _required(op, backend, dtype, device))
    worst = max(r.ratio for case, (inputs, kwargs, names) in zip(cases, problems)
                for r in compare_with_oracle(partial(fn, **kwargs, backend=backend),
                                             partial(fn, **kwargs, backend="reference"),
                                             inputs, names=names, seed=case.seed))
    return CheckRow(op, backend, dtype, len(cases), worst)


def run_check(device: torch.device, quick: bool = False) -> list[CheckRow]:
    """Every op on both fast backends in every dtype; ``quick``: one case per op and
    backend, in float32 (and bfloat16 on CUDA) — an install's smoke test."""
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    if quick:
        dtypes = (torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    return [check_row(op, backend, dtype, device, quick) for op in CHECKS
            for backend in ("triton", "torch") for dtype in dtypes]


def format_check(rows: list[CheckRow]) -> str:
    cells = [("op", "backend", "dtype", "cases", "worst err/allowed", "result")]
    for r in rows:
        result = "ok" if r.ok else "FAIL"
        if r.skipped:
            result = (f"FAIL: skipped ({r.skipped}), but {r.backend} must run {r.dtype} here"
                      if r.required else f"skipped: {r.skipped}")
        ratio = "" if r.worst_ratio is None else f"{r.worst_ratio:.3f}"
        cells.append((r.op, r.backend, str(r.dtype).removeprefix("torch."),
                      str(r.cases), ratio, result))
    return format_rows(cells)
