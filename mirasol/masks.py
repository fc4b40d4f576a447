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
``j`` of its own segment iff ``i < q_len``, ``j < k_len`` and the segment's :class:`Rule`
admits the pair; without a rule (``None``) it sees every key of its segment. With
``c(x) = x // chunk``, a rule admits ``(p, j)`` iff

* ``c(j) <= c(p)`` (chunk-causal), and
* ``window is None``, or ``c(p) - c(j) < window`` (the query's own chunk and the
  ``window - 1`` before it), or ``j < sinks`` (sink keys stay visible to every later chunk).

Teacher forcing (``Rule.teacher_forcing``; CausVid / Self-Forcing training): a segment of
``2L`` positions, ``L`` clean then ``L`` noisy, each half chunked from its own start. A clean
query sees the clean keys the rule above admits and no noisy key; a noisy query of chunk
``c`` sees the clean keys of chunks ``< c`` (window and sinks counted from ``c``: ``c - c(j)
< window`` or ``j < sinks``) and the noisy keys of its own chunk ``c``, nothing else.

The masks of the ops:

* :func:`chunked_causal` (``ops.chunked_causal_attention``, padded): a :class:`Rule` of
  ``chunk_size`` (window, sinks, teacher forcing); each sample's queries and keys its first
  ``lengths[b]`` rows, or ``q_rows`` queries bottom-right against ``k_rows`` keys (cache
  prefill); :func:`chunked_causal_packed`: the same over packed segments;
* :func:`cross_attention` (``ops.cross_attention``, packed): block-diagonal over the
  segments; ``causal``: :data:`TOKEN_CAUSAL`, bottom-right causal (``j <= i + k_len - q_len``);
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


@dataclass(frozen=True)
class Rule:
    """Which keys of its segment a query position sees (module doc): chunks of ``chunk``
    positions, an optional ``window`` of chunks, ``sinks`` always-visible first keys, and
    teacher forcing's clean/noisy halves."""

    chunk: int
    window: int | None = None
    sinks: int = 0
    teacher_forcing: bool = False

    def admits(self, p: Tensor, j: Tensor, k_len) -> Tensor:
        """Whether position ``p`` sees key ``j`` of a segment of ``k_len`` keys (``p`` and
        ``j`` inside it; tensors broadcast)."""
        if not self.teacher_forcing:
            return self._sees(p // self.chunk, j)
        half = k_len // 2
        noisy_p, noisy_j = p >= half, j >= half
        p, j = p - half * noisy_p, j - half * noisy_j
        cp = p // self.chunk
        return torch.where(noisy_p,
                           torch.where(noisy_j, j // self.chunk == cp,
                                       self._sees(cp, j, strictly_earlier=True)),
                           ~noisy_j & self._sees(cp, j))

    def _sees(self, cp: Tensor, j: Tensor, strictly_earlier: bool = False) -> Tensor:
        # Key j's chunk is cp's or earlier (strictly earlier: a noisy query's clean keys),
        # and inside cp's window or a sink. Floor division: a query before the first key
        # (p < 0) has c(p) < 0 <= c(j).
        cj = j // self.chunk
        seen = cj < cp if strictly_earlier else cj <= cp
        if self.window is not None:
            seen = seen & ((cp - cj < self.window) | (j < self.sinks))
        return seen


# Token-causal attention (bottom-right aligned), as cross-attention's ``causal`` means it.
TOKEN_CAUSAL = Rule(1)


def visible(i: Tensor, j: Tensor, q_len, k_len, rule: Rule | None) -> Tensor:
    """The rule: query ``i`` of a segment of ``q_len`` queries sees key ``j`` of its
    ``k_len`` keys (positions counted within the segment, queries bottom-right aligned).
    Tensors broadcast; ``q_len``/``k_len`` may be ints or tensors."""
    inside = (i < q_len) & (j < k_len)
    if rule is None:
        return inside
    return inside & rule.admits(i + k_len - q_len, j, k_len)


@dataclass(frozen=True, eq=False)
class Mask(ABC):
    """A (q_rows, k_rows) boolean attention mask, True = may attend, one per batch entry
    when :attr:`batch` is an int (None: the same mask for every batch entry), its tensors
    on ``device``. A subclass defines the layout (:meth:`sees`); the rest derives."""
    q_rows: int
    k_rows: int
    rule: Rule | None
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
        return visible(i, j, q_len, k_len, self.rule)


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
                                               self.rule)


def _device(lengths: Tensor | None, device) -> torch.device:
    if lengths is not None:
        return lengths.device
    return torch.device("cpu" if device is None else device)


def chunked_causal(n: int, chunk_size: int, lengths: Tensor | None = None,
                   device=None, *, k_rows: int | None = None, window_chunks: int | None = None,
                   sink_tokens: int = 0, teacher_forcing: bool = False) -> PaddedMask:
    """The mask of ``ops.chunked_causal_attention`` on padded (B, H, n, D) queries and
    (B, H_kv, k_rows, D) keys (``k_rows`` default n; more: the queries are the last n
    positions, as in a cache prefill): :class:`Rule` ``(chunk_size, window_chunks,
    sink_tokens, teacher_forcing)``, and ``i, j < lengths[b]`` (n = k_rows only).
    ``device``: where it lives when ``lengths`` is None."""
    rule = Rule(chunk_size, window_chunks, sink_tokens, teacher_forcing)
    return PaddedMask(n, n if k_rows is None else k_rows, rule, _device(lengths, device),
                      lengths, lengths)


def chunked_causal_packed(q_rows: int, k_rows: int, chunk_size: int, *, cu_seqlens_q: Tensor,
                          cu_seqlens_k: Tensor, window_chunks: int | None = None,
                          sink_tokens: int = 0, teacher_forcing: bool = False) -> PackedMask:
    """The mask of ``ops.chunked_causal_attention`` on packed (q_rows, H, D) queries and
    (k_rows, H_kv, D) keys: the :class:`Rule` within each segment (chunks restart at each),
    its queries the last of its positions."""
    rule = Rule(chunk_size, window_chunks, sink_tokens, teacher_forcing)
    return PackedMask(q_rows, k_rows, rule, cu_seqlens_q.device, cu_seqlens_q, cu_seqlens_k)


def cross_attention(q_rows: int, k_rows: int, *, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                    causal: bool = False) -> PackedMask:
    """The mask of ``ops.cross_attention`` on packed (q_rows, H, D) queries and (k_rows, H,
    D) keys: block-diagonal over the segments; ``causal``: bottom-right causal within each."""
    return PackedMask(q_rows, k_rows, TOKEN_CAUSAL if causal else None, cu_seqlens_q.device,
                      cu_seqlens_q, cu_seqlens_k)


def cross_attention_padded(q_rows: int, k_rows: int, *, k_lengths: Tensor | None = None,
                           causal: bool = False, device=None) -> PaddedMask:
    """The mask of ``ops.cross_attention_padded`` on (B, H, q_rows, D) queries and (B, H_kv,
    k_rows, D) keys: every query row sees sample b's first ``k_lengths[b]`` keys;
    ``causal``: bottom-right causal against them."""
    return PaddedMask(q_rows, k_rows, TOKEN_CAUSAL if causal else None,
                      _device(k_lengths, device), None, k_lengths)


# -------------------------------------------------------------------- segment layout


def cu_seqlens(lens: Iterable[int], device=None) -> Tensor:
    """int32 (len(lens) + 1,) segment bounds ``(0, lens[0], lens[0] + lens[1], ...)``."""
    return torch.tensor((0, *accumulate(lens)), dtype=torch.int32, device=device)


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """seg[i] = s for cu_seqlens[s] <= i < cu_seqlens[s + 1]; shape (total,). Empty
    segments own no row."""
    return torch.searchsorted(cu_seqlens[1:], torch.arange(total, device=cu_seqlens.device),
                              right=True)
