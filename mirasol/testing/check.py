"""``mirasol check``: parity of every op and backend the machine can run, at small shapes,
as one table; a non-zero exit if any check fails. Backends that cannot run here are listed
with the reason."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from mirasol._format import format_rows
from mirasol.ops import (BackendUnavailable, chunked_causal_attention, choose_backend,
                         cross_attention, cross_attention_padded, token_pool)
from mirasol.ops._backends import standard_backends
from mirasol.ops.token_pool import BACKENDS as TOKEN_POOL_BACKENDS
from mirasol.testing.cases import AttentionCase, CrossAttentionCase, TokenPoolCase
from mirasol.testing.parity import ParityReport, compare_with_oracle

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


def _chunked(case: AttentionCase, backend: str, device) -> list[ParityReport]:
    q, k, v, lengths = case.tensors(device)
    op = partial(chunked_causal_attention, chunk_size=case.chunk_size, lengths=lengths)
    return compare_with_oracle(partial(op, backend=backend), partial(op, backend="reference"),
                               (q, k, v), names="qkv", seed=case.seed)


def _cross_packed(case: CrossAttentionCase, backend: str, device) -> list[ParityReport]:
    q, k, v, cu_q, cu_k = case.packed(device)
    op = partial(cross_attention, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=case.causal)
    return compare_with_oracle(partial(op, backend=backend), partial(op, backend="reference"),
                               (q, k, v), names="qkv", seed=case.seed)


def _cross_padded(case: CrossAttentionCase, backend: str, device) -> list[ParityReport]:
    q, k, v, k_lengths = case.padded(device)
    op = partial(cross_attention_padded, k_lengths=k_lengths, causal=case.causal)
    return compare_with_oracle(partial(op, backend=backend), partial(op, backend="reference"),
                               (q, k, v), names="qkv", seed=case.seed)


def _token_pool(case: TokenPoolCase, backend: str, device) -> list[ParityReport]:
    x, logits, cu = case.packed(device)
    op = partial(token_pool, cu_seqlens=cu)
    return compare_with_oracle(partial(op, backend=backend), partial(op, backend="reference"),
                               (x, logits), names=("x", "logits"), seed=case.seed)


# op name -> (how one case is checked, the cases, the op's backend declarations)
CHECKS = {
    "chunked_causal_attention": (_chunked, CHUNKED_CASES, standard_backends()),
    "cross_attention": (_cross_packed, CROSS_CASES, standard_backends()),
    "cross_attention_padded": (_cross_padded, CROSS_CASES, standard_backends()),
    "token_pool": (_token_pool, TOKEN_POOL_CASES, TOKEN_POOL_BACKENDS),
}


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


def _row(op: str, backend: str, dtype: torch.dtype, device: torch.device) -> CheckRow:
    run, cases, backends = CHECKS[op]
    try:
        choose_backend(op, backend, backends, device, dtype, 64)
    except BackendUnavailable as e:
        return CheckRow(op, backend, dtype, 0, None, skipped=str(e).split(": ", 2)[-1])
    worst = max(r.ratio for case in cases
                for r in run(replace(case, dtype=dtype), backend, device))
    return CheckRow(op, backend, dtype, len(cases), worst)


def run_check(device: torch.device) -> list[CheckRow]:
    return [_row(op, backend, dtype, device) for op in CHECKS for backend in ("triton", "torch")
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)]


def format_check(rows: list[CheckRow]) -> str:
    cells = [("op", "backend", "dtype", "cases", "worst err/allowed", "result")]
    for r in rows:
        result = f"skipped: {r.skipped}" if r.skipped else ("ok" if r.ok else "FAIL")
        ratio = "" if r.worst_ratio is None else f"{r.worst_ratio:.3f}"
        cells.append((r.op, r.backend, str(r.dtype).removeprefix("torch."),
                      str(r.cases), ratio, result))
    return format_rows(cells)
