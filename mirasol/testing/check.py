"""``mirasol check``: parity of every op and backend the machine can run, at small shapes,
as one table; a non-zero exit if any check fails. Backends that cannot run here are listed
with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from mirasol.ops import BackendUnavailable, chunked_causal_attention, choose_backend
from mirasol.ops.chunked_attention import BACKENDS as CHUNKED_BACKENDS
from mirasol.testing.parity import compare_with_oracle
from mirasol._format import format_rows
from mirasol.testing.cases import AttentionCase

# Small problems that still cross tile and chunk boundaries: grouped heads, lengths that
# are not multiples of anything, one token per chunk, one chunk, non-power-of-two heads.
CHUNKED_CASES = (
    AttentionCase(2, 4, 2, 70, 40, 16, (70, 33), torch.float32, "contiguous", 1),
    AttentionCase(1, 2, 2, 37, 64, 1, None, torch.float32, "bnhd", 2),
    AttentionCase(2, 2, 1, 45, 80, 64, (1, 45), torch.float32, "padded", 3),
)


@dataclass
class CheckRow:
    op: str
    backend: str
    dtype: torch.dtype
    cases: int
    worst_ratio: float | None  # max over cases and tensors of err / allowed
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.skipped != "" or (self.worst_ratio is not None and self.worst_ratio <= 1.0)


def _chunked_row(backend: str, dtype: torch.dtype, device: torch.device) -> CheckRow:
    try:
        choose_backend("chunked_causal_attention", backend, CHUNKED_BACKENDS, device, dtype, 64)
    except BackendUnavailable as e:
        return CheckRow("chunked_causal_attention", backend, dtype, 0, None,
                        skipped=str(e).split(": ", 2)[-1])
    worst = 0.0
    for case in CHUNKED_CASES:
        q, k, v, lengths = AttentionCase(**{**case.__dict__, "dtype": dtype}).tensors(device)
        op = partial(chunked_causal_attention, chunk_size=case.chunk_size, lengths=lengths)
        reports = compare_with_oracle(partial(op, backend=backend),
                                      partial(op, backend="reference"), (q, k, v),
                                      names=("q", "k", "v"), seed=case.seed)
        worst = max([worst] + [r.ratio for r in reports])
    return CheckRow("chunked_causal_attention", backend, dtype, len(CHUNKED_CASES), worst)


def run_check(device: torch.device) -> list[CheckRow]:
    rows = []
    for backend in ("triton", "torch"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            rows.append(_chunked_row(backend, dtype, device))
    return rows


def format_check(rows: list[CheckRow]) -> str:
    cells = [("op", "backend", "dtype", "cases", "worst err/allowed", "result")]
    for r in rows:
        result = f"skipped: {r.skipped}" if r.skipped else ("ok" if r.ok else "FAIL")
        ratio = "" if r.worst_ratio is None else f"{r.worst_ratio:.3f}"
        cells.append((r.op, r.backend, str(r.dtype).removeprefix("torch."),
                      str(r.cases), ratio, result))
    return format_rows(cells)
