"""The ops whose kernels are cross-compiled, and the launches of each at the sizes they are
profiled at: what ``mirasol profile``, the CI gate (tests/test_cross_compile.py) and
bench/tune_configs.py enumerate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .._launch import FIXED_CONFIGS, Capability, Launch
from .problems import AttentionProblem, TokenPoolProblem

# The specializations each op launches, by the name reports give them, and the layout of
# each (problems.py).
VARIANTS = ("chunked", "chunked-window", "chunked-teacher", "chunked-split", "cross",
            "cross-causal")
TOKEN_POOL_VARIANTS = ("padded", "packed")
_LAYOUTS = {"chunked": "chunked_lengths", "chunked-window": "chunked_window",
            "chunked-teacher": "chunked_teacher", "chunked-split": "chunked_window",
            "cross": "cross", "cross-causal": "cross_causal", "padded": "padded_lengths",
            "packed": "packed"}
# The split-KV forward's key splits in the "chunked-split" variant (any count > 1 compiles
# alike: the splits are runtime arguments).
_SPLITS = {"chunked-split": 4}


def _layout(variant: str, known: tuple[str, ...]) -> str:
    if variant not in known:
        raise ValueError(f"variant must be one of {known}, got {variant!r}")
    return _LAYOUTS[variant]


def attention_launches(capability: Capability, dtype: torch.dtype, head_dim: int,
                       variant: str = "chunked", *, batch: int = 2, heads: int = 8,
                       kv_heads: int = 2, seqlen: int = 4096) -> dict[str, Launch]:
    """Every kernel launch of one attention forward + backward, with the configs
    ``capability`` selects. Variants (each a different specialization of the same
    kernels): "chunked" (padded samples with lengths, chunk 256), "chunked-window" (the
    same with a window of 4 chunks and 512 sinks: the block-causal family's
    specialization), "chunked-teacher" (teacher forcing's noisy queries of chunks >= 1
    against the clean keys, first-aligned, fp32 outputs), "chunked-split" (the split-KV
    forward of "chunked-window", 4 splits: the forward alone), "cross" (packed segments,
    cu_seqlens), "cross-causal" (packed, bottom-right causal). Grouped-query heads."""
    layout = _layout(variant, VARIANTS)
    rows = seqlen if layout.startswith("chunked") else batch * seqlen
    q_rows = rows - 256 if layout == "chunked_teacher" else rows
    problem = AttentionProblem(layout, batch, heads, kv_heads, head_dim, q_rows, rows,
                               max_q=q_rows if layout.startswith("chunked") else seqlen,
                               max_k=seqlen, chunk=256, splits=_SPLITS.get(variant, 1))
    return problem.launches(dtype, capability)


def token_pool_launches(capability: Capability, dtype: torch.dtype, num_tokens: int,
                        variant: str = "padded", *, segments: int = 64, tokens: int = 600,
                        dim: int = 512) -> dict[str, Launch]:
    """The token-pooling forward and backward launches: "padded" (with lengths) or
    "packed" (cu_seqlens) segments of a Combiner-sized problem."""
    layout = _layout(variant, TOKEN_POOL_VARIANTS)
    rows = segments * tokens if layout == "packed" else tokens
    problem = TokenPoolProblem(layout, segments, rows, dim, num_tokens, max_rows=tokens)
    return problem.launches(dtype, capability)


@dataclass(frozen=True)
class Op:
    """The kernels of one op (forward and backward) and how to build their launches.

    ``launches(capability, dtype, size, variant)`` returns every kernel launch of the op
    by name; ``size`` is the dimension the tuning table is keyed by (attention: the head
    dim; token pooling: the number of output tokens), and ``buckets`` its table keys.
    """

    launches: Callable[..., dict[str, Launch]]
    kernels: tuple[str, ...]
    variants: tuple[str, ...]
    size_name: str
    buckets: tuple[int, ...]
    # Kernels whose code is the same in every variant (compile them once), kernels with no
    # tl.dot (no tensor-core instructions to expect), and kernels with one fixed tile
    # (_launch.FIXED_CONFIGS), compiled at the largest bucket only: the same tile at a
    # smaller size holds fewer registers and less shared memory.
    variant_free: tuple[str, ...] = ()
    dot_free: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    # Variants that launch only some of the kernels (the split-KV forward): their kernels.
    partial: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def variants_of(self, kernel: str) -> tuple[str, ...]:
        """The variants that launch ``kernel``; the first alone for a variant-free one."""
        if kernel in self.variant_free:
            return self.variants[:1]
        return tuple(v for v in self.variants if kernel in self.partial.get(v, self.kernels))


OPS: dict[str, Op] = {
    "attention": Op(attention_launches,
                    ("attn_fwd", "attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq",
                     "attn_fwd_nan", "attn_bwd_dkdv_nan", "attn_bwd_dq_nan"), VARIANTS,
                    "head_dim", (64, 128, 256), variant_free=("attn_bwd_delta",),
                    dot_free=("attn_bwd_delta",),
                    fixed=tuple(FIXED_CONFIGS),
                    partial={"chunked-split": ("attn_fwd", "attn_fwd_nan")}),
    "token_pool": Op(token_pool_launches, ("token_pool_fwd", "token_pool_bwd"),
                     TOKEN_POOL_VARIANTS, "tokens", (16, 32, 64)),
}
KERNELS: dict[str, str] = {kernel: name for name, op in OPS.items() for kernel in op.kernels}
