"""The definition of each attention mask, once.

Every mask of mirasol's ops is one closed-form predicate over (query row, key row) and the
rows' segment layout (:meth:`Mask.sees`, which puts the layout through :func:`visible`).
Everything else derives from it: FlexAttention's ``mask_mod`` (:attr:`Mask.mask_mod`), the
dense boolean mask the reference attends with (:meth:`Mask.dense`), the BlockMask the
benchmarks hand to FlexAttention (:meth:`Mask.block_mask`), the count of visible pairs the
benchmarks' TFLOP/s use (:meth:`Mask.visible_pairs`), and the tests that hold every
backend's kernels against it (tests/test_masks.py). Depends on torch only.

The rule (:func:`visible`, DESIGN.md §2a). Rows group into segments: the samples of a
padded batch (:class:`PaddedMask`) or the segments of a packed sequence given by
``cu_seqlens`` (:class:`PackedMask`). A segment has ``q_len`` queries and ``k_len`` keys, and
its queries are the *last* ``q_len`` of its ``k_len`` positions (bottom-right aligned): query
row ``i`` of the segment sits at position ``p = i + k_len - q_len``. Query ``i`` sees key
``j`` of its own segment iff ``i < q_len``, ``j < k_len`` and, with ``c(x) = x // chunk``,
``c(j) <= c(p)``; without a chunk (``chunk=None``) it sees every key of its segment.

The masks of today's ops:

* :func:`chunked_causal` (``ops.chunked_causal_attention``): ``chunk = chunk_size``, each
  sample's queries and keys its first ``lengths[b]`` rows (``q_len = k_len``, so ``p = i``);
* :func:`cross_attention` (``ops.cross_attention``, packed): block-diagonal over the
  segments; ``causal``: ``chunk = 1``, bottom-right causal (``j <= i + k_len - q_len``);
* :func:`cross_attention_padded` (``ops.cross_attention_padded``): every query row, the
  sample's first ``k_lengths[b]`` keys (key padding); ``causal`` as above.

A query row that sees no key (past a length, before the first key under causality, in a
segment without keys) attends to nothing: its output is 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Callable, Iterable

import torch
from torch import Tensor

# Score-matrix elements evaluated at once when a mask is counted strip by strip.
_STRIP_ELEMENTS = 1 << 24


def visible(i: Tensor, j: Tensor, q_len, k_len, chunk: int | None) -> Tensor:
    """The rule: query ``i`` of a segment of ``q_len`` queries sees key ``j`` of its
    ``k_len`` keys (positions counted within the segment, queries bottom-right aligned).
    Tensors broadcast; ``q_len``/``k_len`` may be ints or tensors."""
    inside = (i < q_len) & (j < k_len)
    if chunk is None:
        return inside
    # Floor division: a query before the first key (p < 0) has c(p) < 0 <= c(j).
    return inside & (j // chunk <= (i + k_len - q_len) // chunk)


@dataclass(frozen=True, eq=False)
class Mask(ABC):
    """A (q_rows, k_rows) boolean attention mask, True = may attend, one per batch entry
    when :attr:`batch` is an int (None: the same mask for every batch entry), its tensors
    on ``device``. A subclass defines the layout (:meth:`sees`); the rest derives."""
    q_rows: int
    k_rows: int
    chunk: int | None
    device: torch.device

    @property
    @abstractmethod
    def batch(self) -> int | None:
        """The number of batch entries the mask tells apart, or None."""

    @abstractmethod
    def sees(self, b: Tensor, i: Tensor, j: Tensor) -> Tensor:
        """Whether query row ``i`` of batch entry ``b`` sees key row ``j``: the layout's
        segments and positions put through :func:`visible`. Tensors broadcast."""

    @property
    def mask_mod(self) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """FlexAttention's ``mask_mod(batch, head, q_idx, kv_idx)``, the same for every head
        (a plain function: ``create_block_mask`` tells a mask_mod by its argument count)."""
        def mask_mod(b, h, q_idx, kv_idx):
            return self.sees(b, q_idx, kv_idx)
        return mask_mod

    def _grid(self, rows: slice) -> Tensor:
        def arange(n: int) -> Tensor:
            return torch.arange(n, device=self.device)

        b = arange(self.batch or 1)[:, None, None, None]
        i = arange(self.q_rows)[rows][None, None, :, None]
        j = arange(self.k_rows)[None, None, None, :]
        return self.sees(b, i, j).expand(b.shape[0], 1, i.shape[2], self.k_rows)

    def dense(self) -> Tensor:
        """The dense mask, bool (batch or 1, 1, q_rows, k_rows): what the reference and
        SDPA's ``attn_mask`` take."""
        return self._grid(slice(None))

    def visible_pairs(self) -> int:
        """The number of True entries of :meth:`dense`, counted a strip of rows at a time
        (never the whole matrix at once)."""
        step = max(1, _STRIP_ELEMENTS // max(1, self.k_rows * (self.batch or 1)))
        return sum(int(self._grid(slice(start, start + step)).sum())
                   for start in range(0, self.q_rows, step))

    def block_mask(self, *, block_size: int = 128):
        """FlexAttention's ``BlockMask`` of this mask (``create_block_mask`` on the mask's
        device), for ``flex_attention(q, k, v, block_mask=...)`` on (batch, heads, q_rows,
        head_dim) queries and (batch, heads, k_rows, head_dim) keys."""
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(self.mask_mod, self.batch, None, self.q_rows, self.k_rows,
                                 device=self.device, BLOCK_SIZE=block_size)


@dataclass(frozen=True, eq=False)
class PaddedMask(Mask):
    """A padded batch: sample ``b``'s queries are rows ``[0, q_lens[b])`` (all ``q_rows``
    when ``q_lens`` is None), its keys rows ``[0, k_lens[b])`` (all ``k_rows`` when None)."""
    q_lens: Tensor | None = None
    k_lens: Tensor | None = None

    @property
    def batch(self) -> int | None:
        lens = self.q_lens if self.q_lens is not None else self.k_lens
        return None if lens is None else lens.shape[0]

    def sees(self, b, i, j):
        q_len = self.q_rows if self.q_lens is None else self.q_lens[b]
        k_len = self.k_rows if self.k_lens is None else self.k_lens[b]
        return visible(i, j, q_len, k_len, self.chunk)


@dataclass(frozen=True, eq=False)
class PackedMask(Mask):
    """Packed segments: query segment ``s`` is rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]``,
    key segment ``s`` rows ``cu_seqlens_k[s]:cu_seqlens_k[s+1]``; one mask over the whole
    packed sequence (:attr:`batch` None)."""
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    _seg_q: Tensor = field(init=False, repr=False)
    _seg_k: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_seg_q", segment_ids(self.cu_seqlens_q, self.q_rows))
        object.__setattr__(self, "_seg_k", segment_ids(self.cu_seqlens_k, self.k_rows))

    @property
    def batch(self) -> None:
        return None

    def sees(self, b, i, j):
        cu_q, cu_k = self.cu_seqlens_q, self.cu_seqlens_k
        s = self._seg_q[i]
        q_len, k_len = cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]
        return (self._seg_k[j] == s) & visible(i - cu_q[s], j - cu_k[s], q_len, k_len,
                                               self.chunk)


def _device(lengths: Tensor | None, device) -> torch.device:
    if lengths is not None:
        return lengths.device
    return torch.device("cpu" if device is None else device)


def chunked_causal(n: int, chunk_size: int, lengths: Tensor | None = None,
                   device=None) -> PaddedMask:
    """The mask of ``ops.chunked_causal_attention`` on (B, H, n, D): ``j // chunk_size <=
    i // chunk_size`` and ``i, j < lengths[b]`` (``device``: where it lives when
    ``lengths`` is None)."""
    return PaddedMask(n, n, chunk_size, _device(lengths, device), lengths, lengths)


def cross_attention(q_rows: int, k_rows: int, *, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                    causal: bool = False) -> PackedMask:
    """The mask of ``ops.cross_attention`` on packed (q_rows, H, D) queries and (k_rows, H,
    D) keys: block-diagonal over the segments; ``causal``: bottom-right causal within each."""
    return PackedMask(q_rows, k_rows, 1 if causal else None, cu_seqlens_q.device,
                      cu_seqlens_q, cu_seqlens_k)


def cross_attention_padded(q_rows: int, k_rows: int, *, k_lengths: Tensor | None = None,
                           causal: bool = False, device=None) -> PaddedMask:
    """The mask of ``ops.cross_attention_padded`` on (B, H, q_rows, D) queries and (B, H_kv,
    k_rows, D) keys: every query row sees sample b's first ``k_lengths[b]`` keys;
    ``causal``: bottom-right causal against them."""
    return PaddedMask(q_rows, k_rows, 1 if causal else None, _device(k_lengths, device),
                      None, k_lengths)


# -------------------------------------------------------------------- segment layout


def cu_seqlens(lens: Iterable[int], device=None) -> Tensor:
    """int32 (len(lens) + 1,) segment bounds ``(0, lens[0], lens[0] + lens[1], ...)``."""
    return torch.tensor((0, *accumulate(lens)), dtype=torch.int32, device=device)


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """seg[i] = s for cu_seqlens[s] <= i < cu_seqlens[s + 1]; shape (total,). Empty
    segments own no row."""
    return torch.searchsorted(cu_seqlens[1:], torch.arange(total, device=cu_seqlens.device),
                              right=True)
