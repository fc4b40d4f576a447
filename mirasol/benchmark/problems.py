"""The benchmark problems: each op's standard shapes, its inputs, the visible (query, key)
pairs its TFLOP/s count, and its lineup (mirasol, SDPA's ways to express the mask, and the
optional :mod:`~mirasol.benchmark.rivals`). Every mask comes from :mod:`mirasol.masks`."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol import masks
from mirasol.benchmark import rivals
from mirasol.benchmark.lineup import Lineup, Target, Variant
from mirasol.ops import chunked_causal_attention, cross_attention, token_pool


def _attention_flops(visible_pairs: int, setting: Setting, backward: bool) -> float:
    """FlashAttention's count: 4 d FLOPs per visible (query, key) pair and head forward
    (QK^T and PV), 2.5x that more backward."""
    return visible_pairs * setting.heads * 4 * setting.head_dim * (3.5 if backward else 1)


@dataclass(frozen=True)
class Setting:
    heads: int = 8
    head_dim: int = 64
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    def randn(self, *shape: int, seed: int, requires_grad: bool) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(shape, generator=gen).to(self.device, self.dtype)
                .requires_grad_(requires_grad))

    @property
    def backend(self) -> str:
        return "torch" if self.device == "cpu" else "triton"


@dataclass(frozen=True)
class ChunkedProblem:
    """``chunked_causal_attention`` on one padded batch: ``seqlen`` query rows against
    ``cached + seqlen`` keys (the queries are the last positions, DESIGN.md §2a), under the
    family's rule (``window_chunks``, ``sink_tokens``, ``teacher_forcing``: ``seqlen`` is
    then both halves, 2L). With the defaults, the plain chunked table and its lineup (SDPA
    dense mask, causal, unmasked, the CUDA rivals); any of the family's options: the family
    lineup (:meth:`variants`). ``modes``: what :func:`~mirasol.benchmark.timing.run` times by
    default; ``targets``: ratios reported against goals (:class:`Target`), never asserted."""
    batch: int = 1
    seqlen: int = 4096
    chunk_size: int = 256
    setting: Setting = Setting()
    window_chunks: int | None = None
    sink_tokens: int = 0
    cached: int = 0
    teacher_forcing: bool = False
    name: str = ""
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    targets: tuple[Target, ...] = ()
    # On CUDA, also mirasol with its forward kept in one split (the split-KV forward's
    # comparison: a decode step's few queries against a long cache).
    unsplit_too: bool = False
    # Also mirasol through each context-parallel mode (mirasol.distributed) at world size 1,
    # in a process group of this one process: their overhead over the plain op.
    context_parallel: bool = False

    @property
    def k_len(self) -> int:
        return self.cached + self.seqlen

    @property
    def family(self) -> bool:
        """Any of the family's options: the family lineup (sinks alone change nothing)."""
        return self.window_chunks is not None or self.cached > 0 or self.teacher_forcing

    @property
    def title(self) -> str:
        s, C = self.setting, self.chunk_size
        heads = f"H={s.heads} d={s.head_dim}"
        if not self.family:
            return (f"chunked causal attention: B={self.batch} N={self.seqlen} "
                    f"chunk={C}, {heads}")
        rule = (f"window={self.window_chunks} chunks, sinks={self.sink_tokens}"
                if self.window_chunks is not None else "no window")
        if self.teacher_forcing:
            shape = f"N=2x{self.seqlen // 2} (clean, then noisy)"
        elif self.cached:
            shape = (f"{self.seqlen} queries against {self.k_len} keys ({self.cached} cached "
                     f"+ the queries' own {self.seqlen})")
        else:
            shape = f"N={self.seqlen}"
        kind = ("teacher forcing" if self.teacher_forcing
                else "cache prefill" if self.cached else "chunked causal attention")
        label = f" [{self.name}]" if self.name else ""
        return f"{kind}{label}: B={self.batch} {shape}, chunk={C}, {rule}, {heads}"

    def inputs(self, requires_grad: bool) -> tuple[Tensor, ...]:
        s = self.setting
        return tuple(s.randn(self.batch, s.heads, n, s.head_dim, seed=i,
                             requires_grad=requires_grad)
                     for i, n in enumerate((self.seqlen, self.k_len, self.k_len)))

    @functools.cached_property
    def mask(self) -> masks.PaddedMask:
        return masks.chunked_causal(self.seqlen, self.chunk_size, device=self.setting.device,
                                    k_rows=self.k_len, window_chunks=self.window_chunks,
                                    sink_tokens=self.sink_tokens,
                                    teacher_forcing=self.teacher_forcing)

    @functools.cached_property
    def _visible_pairs(self) -> int:
        return self.batch * self.mask.visible_pairs()

    def visible_pairs(self) -> int:
        """(query, key) pairs the mask lets through, per head."""
        return self._visible_pairs

    def visible_fraction(self) -> float:
        """The share of the (query, key) grid the mask lets through."""
        return self.visible_pairs() / (self.batch * self.seqlen * self.k_len)

    def flops(self, backward: bool) -> float:
        return _attention_flops(self.visible_pairs(), self.setting, backward)

    def _call(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return chunked_causal_attention(q, k, v, self.chunk_size,
                                        window_chunks=self.window_chunks,
                                        sink_tokens=self.sink_tokens,
                                        teacher_forcing=self.teacher_forcing,
                                        backend=self.setting.backend)

    def variants(self) -> Lineup:
        """Plain: mirasol, SDPA with the dense mask (the baseline), token-causal SDPA,
        unmasked SDPA, SDPA's CUDA backends and :data:`rivals.CHUNKED_RIVALS`. Family: mirasol,
        one SDPA row on the same keys -- the dense mask (the baseline), or, when the mask
        hides no pair (a one-chunk cache prefill without a window), unmasked SDPA -- SDPA's
        CUDA backends and :data:`rivals.FAMILY_RIVALS` (FlexAttention, on CPU too, forward
        only there). The dense mask's build time is in its note, not in the time; mirasol's
        mask is a closed form, nothing is built."""
        s = self.setting
        start = time.perf_counter()
        mask = self.mask.dense()
        built_ms = (time.perf_counter() - start) * 1e3
        rows = [Variant(f"mirasol {s.backend}", self._call, self.inputs,
                        "closed-form mask, nothing built" if self.family else "",
                        sync_free=True)]
        if self.unsplit_too and s.backend == "triton":
            rows.append(Variant("mirasol triton, one split", self._call, self.inputs,
                                "the split-KV forward off", sync_free=True,
                                context=_one_split))
        if self.context_parallel:
            rows += self._context_parallel_rows()
        dense = Variant("SDPA dense mask",
                        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                        self.inputs, f"{'N x N' if not self.cached else 'Nq x Nk'} bool mask"
                        + (f" (built in {built_ms:.1f} ms, not in the time)" if self.family
                           else ""))
        unmasked = Variant("SDPA unmasked", F.scaled_dot_product_attention, self.inputs,
                           "all Nq x Nk scores" if self.cached else "all N^2 scores")
        if not self.family:
            sdpa = [dense, Variant("SDPA causal",
                                   lambda q, k, v: F.scaled_dot_product_attention(
                                       q, k, v, is_causal=True),
                                   self.inputs, "token-causal, not chunked")]
            built, skipped = rivals.build(rivals.CHUNKED_RIVALS, self)
            by_backend, not_here = rivals.sdpa_backends(sdpa, s.device)
            return Lineup("SDPA dense mask", rows + sdpa + [unmasked] + by_backend + built,
                          not_here + skipped)
        hides_none = self.visible_pairs() == self.batch * self.seqlen * self.k_len
        sdpa = [unmasked if hides_none else dense]
        built, skipped = rivals.build(rivals.FAMILY_RIVALS, self)
        by_backend, not_here = rivals.sdpa_backends(sdpa, s.device)
        return Lineup(sdpa[0].name, rows + sdpa + by_backend + built, not_here + skipped)


    def _context_parallel_rows(self) -> list[Variant]:
        from mirasol.distributed import ChunkShards, chunk_sharded_attention, ulysses_attention

        rule = dict(window_chunks=self.window_chunks, sink_tokens=self.sink_tokens,
                    backend=self.setting.backend)
        shards = ChunkShards(self.chunk_size, (self.seqlen,), 1)
        note = "world size 1: the plain op's overhead"
        return [Variant(f"mirasol {self.setting.backend}, Ulysses", lambda q, k, v:
                        ulysses_attention(chunked_causal_attention, q, k, v, self.chunk_size,
                                          **rule), self.inputs, note, sync_free=True,
                        context=_one_process_group),
                Variant(f"mirasol {self.setting.backend}, chunk shards", lambda q, k, v:
                        chunk_sharded_attention(q, k, v, shards, **rule), self.inputs, note,
                        sync_free=True, context=_one_process_group)]


def _one_process_group():
    """A process group of this process alone (left in place for the next row)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return contextlib.nullcontext()


def _one_split():
    from mirasol.kernels.attention import force_key_splits

    return force_key_splits(1)


@dataclass(frozen=True)
class CrossProblem:
    name: str
    q_lens: tuple[int, ...]
    k_lens: tuple[int, ...]
    setting: Setting = Setting()

    @property
    def title(self) -> str:
        return (f"cross-attention ({self.name}): {len(self.q_lens)} segments, queries "
                f"{min(self.q_lens)}-{max(self.q_lens)}, keys {min(self.k_lens)}-"
                f"{max(self.k_lens)}, H={self.setting.heads} d={self.setting.head_dim}")

    def cu(self, lens) -> Tensor:
        return masks.cu_seqlens(lens, self.setting.device)

    @functools.cached_property
    def mask(self) -> masks.PackedMask:
        """The packed problem's block-diagonal mask."""
        return masks.cross_attention(sum(self.q_lens), sum(self.k_lens),
                                     cu_seqlens_q=self.cu(self.q_lens),
                                     cu_seqlens_k=self.cu(self.k_lens))

    def packed(self, requires_grad: bool) -> tuple[Tensor, ...]:
        s = self.setting
        return (s.randn(sum(self.q_lens), s.heads, s.head_dim, seed=0, requires_grad=requires_grad),
                *(s.randn(sum(self.k_lens), s.heads, s.head_dim, seed=i,
                          requires_grad=requires_grad) for i in (1, 2)))

    def padded(self, requires_grad: bool) -> tuple[Tensor, ...]:
        s, B = self.setting, len(self.q_lens)
        return (s.randn(B, s.heads, max(self.q_lens), s.head_dim, seed=0,
                        requires_grad=requires_grad),
                *(s.randn(B, s.heads, max(self.k_lens), s.head_dim, seed=i,
                          requires_grad=requires_grad) for i in (1, 2)))

    def packed_4d(self, requires_grad: bool) -> tuple[Tensor, ...]:
        """The packed tokens as one (1, H, total, d) sample: FlexAttention's layout."""
        return tuple(t.detach().transpose(0, 1)[None].contiguous().requires_grad_(requires_grad)
                     for t in self.packed(requires_grad))

    @functools.cached_property
    def _visible_pairs(self) -> int:
        return self.mask.visible_pairs()

    def visible_pairs(self) -> int:
        return self._visible_pairs

    def flops(self, backward: bool) -> float:
        return _attention_flops(self.visible_pairs(), self.setting, backward)

    def variants(self) -> Lineup:
        s = self.setting
        cu_q, cu_k = self.cu(self.q_lens), self.cu(self.k_lens)
        max_q, max_k = max(self.q_lens), max(self.k_lens)
        block_diagonal = self.mask.dense()
        # (B, 1, 1, Lk), broadcast over the query rows, as SDPA users write a key mask: every
        # row of a non-causal padded mask is the same.
        key_padding = masks.cross_attention_padded(
            1, max_k, k_lengths=torch.tensor(self.k_lens, device=s.device)).dense()

        def packed_sdpa(q, k, v):
            out = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)),
                                                 attn_mask=block_diagonal)
            return out[0].transpose(0, 1)

        rows = [
            Variant(f"mirasol {s.backend}",
                    lambda q, k, v: cross_attention(q, k, v, cu_seqlens_q=cu_q,
                                                    cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                                                    max_seqlen_k=max_k, backend=s.backend),
                    self.packed, "packed, given its max lengths", sync_free=True),
        ]
        sdpa = [
            Variant("SDPA padded + key mask",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                   attn_mask=key_padding),
                    self.padded, "B x Lq x Lk of work"),
            Variant("SDPA block-diagonal mask", packed_sdpa, self.packed,
                    "dense total_q x total_k mask"),
        ]
        built, skipped = rivals.build(rivals.CROSS_RIVALS, self)
        by_backend, not_here = rivals.sdpa_backends(sdpa, s.device)
        return Lineup("SDPA block-diagonal mask", rows + sdpa + by_backend + built,
                      not_here + skipped)


@dataclass(frozen=True)
class TokenPoolProblem:
    """TokenLearner pooling as the TTM Combiner reads: per chunk, ``tokens`` outputs pooled
    from the memory and the chunk's tokens, all chunks packed (``seg_lens``). ``dim`` is the
    feature width (the setting's heads and head_dim do not apply). Few FLOPs per byte: the
    op is memory-bound, so expect a small fraction of the tensor-core peak."""
    name: str
    seg_lens: tuple[int, ...]
    tokens: int = 32
    dim: int = 1024
    setting: Setting = Setting()

    @property
    def title(self) -> str:
        return (f"token pooling ({self.name}): {len(self.seg_lens)} segments of "
                f"{min(self.seg_lens)}-{max(self.seg_lens)} tokens, {self.tokens} outputs, "
                f"d={self.dim}")

    def inputs(self, requires_grad: bool) -> tuple[Tensor, ...]:
        total, s = sum(self.seg_lens), self.setting
        return (s.randn(total, self.dim, seed=0, requires_grad=requires_grad),
                s.randn(total, self.tokens, seed=1, requires_grad=requires_grad))

    def flops(self, backward: bool) -> float:
        """2 FLOPs per (token, output, feature) forward (weights^T x); the backward's two
        products (dx, dweights) double that again."""
        return 2 * sum(self.seg_lens) * self.tokens * self.dim * (3 if backward else 1)

    def variants(self) -> Lineup:
        cu = masks.cu_seqlens(self.seg_lens, self.setting.device)
        backends = dict.fromkeys((self.setting.backend, "torch"))  # triton first on CUDA
        rows = [Variant(f"mirasol {b}",
                        functools.partial(_token_pool_call, cu_seqlens=cu, backend=b),
                        self.inputs, "" if b == "triton" else "masked softmax + bmm, fp32")
                for b in backends]
        return Lineup("mirasol torch", rows, [])


def _token_pool_call(x: Tensor, logits: Tensor, *, cu_seqlens: Tensor, backend: str) -> Tensor:
    return token_pool(x, logits, cu_seqlens=cu_seqlens, backend=backend)


ISSUE_19 = "issue 19 item 7"


def family(setting: Setting, seqlen: int = 8192, chunk_size: int = 512
           ) -> dict[str, ChunkedProblem]:
    """The block-causal family's tables (DESIGN.md §2a; issue 19 item 7), each against
    SDPA on the same keys and compiled FlexAttention with the same BlockMask:

    * ``window-sinks``: N=``seqlen``, a window of 4 chunks and one chunk of sinks (27% of
      the pairs visible at the defaults), fwd and fwd+bwd against the dense mask;
    * ``prefill``: one chunk of 2 x ``chunk_size`` queries (1,024) against ``seqlen`` keys,
      the chunk's own included (7,168 cached + 1,024), no window: every key visible, so
      against unmasked SDPA, forward only (inference);
    * ``teacher-forcing``: N = 2 x ``seqlen // 2`` (clean + noisy), fwd and fwd+bwd against
      the dense mask.

    Targets (reported, not asserted): window-sinks fwd <= 0.40x and fwd+bwd <= 0.45x of
    dense-mask SDPA and at least 1.5x faster than FlexAttention forward (<= 1/1.5 of its
    time); prefill <= 1.1x of unmasked SDPA."""
    ours = f"mirasol {setting.backend}"
    prefill_chunk = 2 * chunk_size
    return {
        "window-sinks": ChunkedProblem(
            seqlen=seqlen, chunk_size=chunk_size, setting=setting, window_chunks=4,
            sink_tokens=chunk_size, name="window-sinks",
            targets=(Target("fwd", ours, "SDPA dense mask", 0.40, ISSUE_19),
                     Target("fwd+bwd", ours, "SDPA dense mask", 0.45, ISSUE_19),
                     Target("fwd", ours, "FlexAttention", 1 / 1.5, ISSUE_19 + ": >= 1.5x "
                            "faster"))),
        "prefill": ChunkedProblem(
            seqlen=prefill_chunk, chunk_size=prefill_chunk, setting=setting,
            cached=seqlen - prefill_chunk, name="prefill", modes=("fwd",),
            targets=(Target("fwd", ours, "SDPA unmasked", 1.1, ISSUE_19),
                     Target("fwd", ours, "FlexAttention"))),
        "teacher-forcing": ChunkedProblem(
            seqlen=seqlen, chunk_size=chunk_size, setting=setting, teacher_forcing=True,
            name="teacher-forcing",
            targets=(Target("fwd", ours, "SDPA dense mask"),
                     Target("fwd+bwd", ours, "SDPA dense mask"),
                     Target("fwd", ours, "FlexAttention"))),
    }


def problems(setting: Setting, seqlen: int = 4096) -> dict[str, object]:
    """The standard tables (see the module docstring)."""
    text_queries = (32, 40, 48, 56, 64, 36, 44, 60)
    combiner = tuple(560 + 40 * (i % 3) for i in range(16))  # 560, 600, 640, ...
    return {
        "chunked": ChunkedProblem(seqlen=seqlen, setting=setting),
        "cross-text": CrossProblem("text decoder", text_queries, (128,) * 8, setting),
        "cross-combiner": CrossProblem("Combiner, block-diagonal", combiner, combiner, setting),
    }
