"""The benchmark problems: each op's standard shapes, its inputs, the visible (query, key)
pairs its TFLOP/s count, and its lineup (mirasol, SDPA's ways to express the mask, and the
optional :mod:`~mirasol.benchmark.rivals`). Every mask comes from :mod:`mirasol.masks`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol import masks
from mirasol.benchmark import rivals
from mirasol.benchmark.lineup import Lineup, Variant
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
    batch: int = 1
    seqlen: int = 4096
    chunk_size: int = 256
    setting: Setting = Setting()

    @property
    def title(self) -> str:
        return (f"chunked causal attention: B={self.batch} N={self.seqlen} "
                f"chunk={self.chunk_size}, H={self.setting.heads} d={self.setting.head_dim}")

    def inputs(self, requires_grad: bool) -> tuple[Tensor, ...]:
        s = self.setting
        return tuple(s.randn(self.batch, s.heads, self.seqlen, s.head_dim, seed=i,
                             requires_grad=requires_grad) for i in range(3))

    @functools.cached_property
    def mask(self) -> masks.PaddedMask:
        return masks.chunked_causal(self.seqlen, self.chunk_size, device=self.setting.device)

    @functools.cached_property
    def _visible_pairs(self) -> int:
        return self.batch * self.mask.visible_pairs()

    def visible_pairs(self) -> int:
        """(query, key) pairs the mask lets through, per head."""
        return self._visible_pairs

    def flops(self, backward: bool) -> float:
        return _attention_flops(self.visible_pairs(), self.setting, backward)

    def variants(self) -> Lineup:
        C, s, mask = self.chunk_size, self.setting, self.mask.dense()
        rows = [
            Variant(f"mirasol {s.backend}",
                    lambda q, k, v: chunked_causal_attention(q, k, v, C, backend=s.backend),
                    self.inputs, sync_free=True),
        ]
        sdpa = [
            Variant("SDPA dense mask",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                    self.inputs, "N x N bool mask"),
            Variant("SDPA causal",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    self.inputs, "token-causal, not chunked"),
        ]
        unmasked = Variant("SDPA unmasked", F.scaled_dot_product_attention, self.inputs,
                           "all N^2 scores")
        built, skipped = rivals.build(rivals.CHUNKED_RIVALS, self)
        by_backend, not_here = rivals.sdpa_backends(sdpa, s.device)
        return Lineup("SDPA dense mask", rows + sdpa + [unmasked] + by_backend + built,
                      not_here + skipped)


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


def problems(setting: Setting, seqlen: int = 4096) -> dict[str, object]:
    """The standard tables (see the module docstring)."""
    text_queries = (32, 40, 48, 56, 64, 36, 44, 60)
    combiner = tuple(560 + 40 * (i % 3) for i in range(16))  # 560, 600, 640, ...
    return {
        "chunked": ChunkedProblem(seqlen=seqlen, setting=setting),
        "cross-text": CrossProblem("text decoder", text_queries, (128,) * 8, setting),
        "cross-combiner": CrossProblem("Combiner, block-diagonal", combiner, combiner, setting),
    }
