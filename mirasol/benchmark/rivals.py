"""Optional rivals of the mirasol ops: FlexAttention (compiled, with the op's mask from
:mod:`mirasol.masks` as its BlockMask, built and timed apart; on CPU too for the family
tables, forward only), each of SDPA's backends (:func:`sdpa_backends`), flash-attn and
xformers. A rival that cannot be built or fails to
run is listed as skipped with the reason, never raised.

The rival lists are looked up when a problem builds its lineup, so a caller (or a test)
can change them: ``monkeypatch.setattr(rivals, "CHUNKED_RIVALS", [...])``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from mirasol.benchmark.lineup import Skipped, Variant, reason
from mirasol.masks import Mask

if TYPE_CHECKING:
    from mirasol.benchmark.problems import ChunkedProblem, CrossProblem


@dataclass(frozen=True)
class Rival:
    """A competitor from an optional package or torch feature. ``make(problem)`` builds its
    :class:`Variant` and raises if it cannot (package missing, shape unsupported): the
    reason is then listed as skipped. flash-attn's and xformers' attention need a GPU;
    FlexAttention runs on CPU for the chunked and family tables (forward only there)."""
    name: str
    make: Callable[[Any], Variant]
    cuda_only: bool = True


def build(rivals: list[Rival], problem) -> tuple[list[Variant], list[Skipped]]:
    """The variants of the rivals that could be built for ``problem``, and the others."""
    built, skipped = [], []
    for rival in rivals:
        if rival.cuda_only and problem.setting.device == "cpu":
            skipped.append(Skipped(rival.name, "all", "CUDA only"))
            continue
        try:
            built.append(rival.make(problem))
        except Exception as e:  # noqa: BLE001 -- any failure of an optional rival is a skip
            skipped.append(Skipped(rival.name, "all", reason(e)))
    return built, skipped


def _flex(mask: Mask, inputs) -> Variant:
    """FlexAttention compiled once (the first timed call compiles; warm-up follows) with
    ``mask``'s BlockMask, whose build time is measured here and reported in the note. On
    CPU it is timed forward only: FlexAttention has no backward there."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # A fresh dynamo cache per table: the compiles of earlier tables would otherwise use up
    # the recompile limit, after which torch.compile silently runs flex_attention eagerly.
    torch._dynamo.reset()
    start = time.perf_counter()
    block_mask = mask.block_mask()
    if torch.device(mask.device).type == "cuda":
        torch.cuda.synchronize()
    build_ms = (time.perf_counter() - start) * 1e3
    # Compiled once per table; each mode (no_grad forward, forward+backward) is one graph.
    compiled = torch.compile(flex_attention, dynamic=False)
    on_cpu = torch.device(mask.device).type == "cpu"
    return Variant("FlexAttention", lambda q, k, v: compiled(q, k, v, block_mask=block_mask),
                   inputs, f"compiled, same block mask (built in {build_ms:.1f} ms, not in "
                   "the time)", optional=True,
                   forward_only="FlexAttention has no backward on CPU" if on_cpu else "")


def _flex_chunked(problem: ChunkedProblem) -> Variant:
    return _flex(problem.mask, problem.inputs)


def _flash_causal(problem: ChunkedProblem) -> Variant:
    from flash_attn import flash_attn_func

    # flash-attn takes (B, N, H, D); token-causal does about as much work as chunk size 1.
    return Variant("flash-attn causal",
                   lambda q, k, v: flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)),
                                                   causal=True).transpose(1, 2),
                   problem.inputs, "token-causal, not chunked", optional=True)


def _flex_cross(problem: CrossProblem) -> Variant:
    return _flex(problem.mask, problem.packed_4d)


def _flash_varlen(problem: CrossProblem) -> Variant:
    from flash_attn import flash_attn_varlen_func

    cu_q, cu_k = problem.cu(problem.q_lens), problem.cu(problem.k_lens)
    max_q, max_k = max(problem.q_lens), max(problem.k_lens)
    return Variant("flash_attn_varlen_func",
                   lambda q, k, v: flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k),
                   problem.packed, "packed", optional=True)


def _xformers_block_diagonal(problem: CrossProblem) -> Variant:
    from xformers.ops import memory_efficient_attention
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    bias = BlockDiagonalMask.from_seqlens(list(problem.q_lens), list(problem.k_lens))
    return Variant("xformers BlockDiagonalMask",
                   lambda q, k, v: memory_efficient_attention(q[None], k[None], v[None],
                                                              attn_bias=bias)[0],
                   problem.packed, "packed", optional=True)


# SDPA's backends by the names the tables use; math is the dispatcher's last resort, and the
# default dispatch is already a row of its own.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION"}


def _sdpa_kernel(backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


def sdpa_backends(variants: list[Variant], device: str) -> tuple[list[Variant], list[Skipped]]:
    """Each SDPA variant again with SDPA held to one backend at a time (entered around the
    measurement, not per call), on CUDA, where SDPA has several. Optional: a backend that
    does not serve the mask or dtype there raises, and is listed as skipped with SDPA's
    reason. On CPU they are listed as skipped."""
    if device == "cpu":
        return [], [Skipped(f"SDPA [{backend}]", "all", "CUDA only") for backend in SDPA_BACKENDS]
    return [replace(v, name=f"{v.name} [{backend}]", optional=True,
                    context=functools.partial(_sdpa_kernel, backend))
            for v in variants for backend in SDPA_BACKENDS], []


# Looked up when a problem builds its lineup, so a caller (or a test) can change them.
CHUNKED_RIVALS = [Rival("FlexAttention", _flex_chunked, cuda_only=False),
                  Rival("flash-attn", _flash_causal)]
# FlexAttention runs on CPU too (compiled forward; it has no backward there), where
# chunk-causal users have no other block-mask path. The family's masks (windows, sinks,
# cache prefill, teacher forcing): FlexAttention only (flash-attn's token windows are
# another mask).
FAMILY_RIVALS = [Rival("FlexAttention", _flex_chunked, cuda_only=False)]
CROSS_RIVALS = [Rival("FlexAttention", _flex_cross), Rival("flash-attn", _flash_varlen),
                Rival("xformers", _xformers_block_diagonal)]