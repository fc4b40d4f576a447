"""The torch backend's plan: a masked problem cut into fused calls, chosen by a cost model
measured on this kind of machine (``mirasol bench --calibrate-cpu``).

A segment's query rows fall into *row spans* over which visibility is constant
(:func:`row_spans`). A plan groups ``g`` consecutive row spans into one
*superblock* and runs it as at most two fused calls, merged by their log-sum-exp:

* the keys that every row of the superblock sees and that lie before its first row's own
  position (the unmasked prefix): one call, no mask;
* the other keys any of its rows sees (its own chunks, the window's moving edge, a
  teacher-forcing half): one call with a piece-sized mask.

``g = 1`` is one unmasked call per row span (each row span sees a fixed set of keys); ``g``
= all row spans is one masked call. Every row sees the key at its own position, which lies
in the second call, so no row of a call is fully masked. Few large calls amortize the fixed
cost of a call and reach the fused kernel's larger query blocks; masked pieces pay for the
pairs they hide. The cost model (:class:`CallCost`) weighs both per candidate ``g``
(powers of two and "all"), and the cheapest plan wins; a masked piece stays within
:data:`MASKED_ELEMENTS` (no ``N x N`` tensor beyond one superblock's).

One more candidate serves a whole segment whose rule hides no earlier chunk (no window, no
teacher forcing, as many queries as keys): the :class:`TokenCausalSplit`. Chunk-causal is
token-causal plus, for each row, the rest of its own chunk, so it runs as token-causal
attention over the keys before each row (one call; the fused kernel skips the blocks past
the diagonal, so it does about the visible pairs' work at the unmasked rate) and each
chunk's rows against its own keys from their position on (all chunks batched in one masked
call of ``chunk x chunk``), merged by LSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from einops import rearrange

from mirasol.masks import Rule
from mirasol.ops._dense import attention_lse, attention_lse_backward

# The most (row, key) elements of one masked piece's mask: 16 MB as an fp32 additive mask.
MASKED_ELEMENTS = 1 << 22

Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Piece:
    """One fused call of a superblock: its rows against the keys of ``spans`` (gathered in
    order), with ``mask`` (rows, keys) bool where some of its pairs are hidden, else None."""
    spans: Spans
    mask: Tensor | None = None

    @property
    def keys(self) -> int:
        return sum(b - a for a, b in self.spans)


@dataclass(frozen=True)
class Superblock:
    """Rows ``[r0, r1)`` of a segment and the pieces whose LSE-merged outputs they are."""
    r0: int
    r1: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class TokenCausalSplit:
    """All ``n`` rows of a segment of ``n`` queries and keys whose rule hides no earlier
    chunk, as token-causal attention over the keys before each row merged with each chunk's
    rows against its own keys from their position on (module doc)."""
    n: int
    chunk: int

    @property
    def r0(self) -> int:
        return 0

    @property
    def r1(self) -> int:
        return self.n


@dataclass(frozen=True)
class CallCost:
    """Milliseconds of one fused call: ``call + work * (rows * keys * pair + blocks * keys *
    stream + (rows + keys) * row)``, ``work = batch x heads x head dim``: the pairs'
    arithmetic, the keys and values streamed once per query block (PyTorch's CPU flash
    attention takes 32-row blocks below 192 rows, 64 below 768, else 256: ``blocks`` of
    them), and the rows read and written. ``call``: what one more piece costs the backend
    whatever its size. ``merge``: per ``work x rows`` element, one LSE merge of two partial
    outputs."""
    call: float
    pair: float
    stream: float
    row: float
    merge: float = 0.0

    def ms(self, work: int, rows: int, keys: int) -> float:
        return self.call + work * (rows * keys * self.pair + query_blocks(rows) * keys
                                   * self.stream + (rows + keys) * self.row)


def query_blocks(rows: int) -> int:
    """The fused CPU kernel's query blocks for ``rows`` rows."""
    size = 32 if rows < 192 else 64 if rows < 768 else 256
    return -(-rows // size)


def _union(spans_list) -> Spans:
    cuts = sorted({x for spans in spans_list for span in spans for x in span})
    return _spans([(a, b) for a, b in zip(cuts, cuts[1:])
                   if any(s <= a and b <= e for spans in spans_list for s, e in spans)])


def _spans(atoms) -> Spans:
    """Adjacent (a, b) intervals joined."""
    out: list[tuple[int, int]] = []
    for a, b in atoms:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def _superblock(row_spans, shift: int, k_len: int, rule: Rule) -> Superblock | None:
    """Consecutive row spans ``((r0, r1, key spans), ...)`` as one superblock; None if its
    masked piece would exceed :data:`MASKED_ELEMENTS`."""
    r0, r1 = row_spans[0][0], row_spans[-1][1]
    own = r0 + shift  # the first row's own position: every row's own key is at or after it
    cuts = sorted({x for *_, spans in row_spans for span in spans for x in span} | {own})
    atoms = [(a, b) for a, b in zip(cuts, cuts[1:])]
    seen_by = [sum(any(s <= a and b <= e for s, e in spans) for *_, spans in row_spans)
               for a, b in atoms]
    everyone = len(row_spans)
    prefix = [atom for atom, n in zip(atoms, seen_by) if n == everyone and atom[1] <= own]
    rest = [atom for atom, n in zip(atoms, seen_by) if n and atom not in prefix]
    if all(n == everyone for atom, n in zip(atoms, seen_by) if atom in rest):
        return Superblock(r0, r1, (Piece(_spans(sorted(prefix + rest))),))
    if (r1 - r0) * sum(b - a for a, b in rest) > MASKED_ELEMENTS:
        return None
    keys = torch.cat([torch.arange(a, b) for a, b in _spans(rest)])
    positions = torch.arange(r0, r1) + shift
    mask = rule.admits(positions[:, None], keys[None, :], k_len)
    pieces = (Piece(_spans(prefix)),) if prefix else ()
    return Superblock(r0, r1, pieces + (Piece(_spans(rest), mask),))


def _cost(blocks: tuple[Superblock, ...], costs: dict[str, CallCost], work: int) -> float:
    total = 0.0
    for block in blocks:
        rows = block.r1 - block.r0
        for piece in block.pieces:
            cost = costs["masked" if piece.mask is not None else "unmasked"]
            total += cost.ms(work, rows, piece.keys)
        total += (len(block.pieces) - 1) * work * rows * costs["unmasked"].merge
    return total


def _runs(flags: list[bool], cuts: list[int]) -> Spans:
    """The [cuts[a], cuts[b]) spans of consecutive True flags (flag i spans cuts[i:i+2])."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = cuts[i]
        elif not flag and start is not None:
            runs.append((start, cuts[i]))
            start = None
    return tuple(runs)


@lru_cache(maxsize=4096)
def row_spans(q_len: int, k_len: int, rule: Rule) -> tuple[tuple[int, int, Spans], ...]:
    """One segment's query rows as spans of constant visibility, from the rule itself: rows
    and keys cut where visibility can change (chunk starts, each half's under teacher
    forcing, and the sinks' end), and ``rule.admits`` evaluated once per pair of spans.
    ``((r0, r1, key spans its rows see), ...)``, neighbouring spans with the same keys
    merged, rows that see nothing left out."""
    half = k_len // 2 if rule.teacher_forcing else k_len
    streams = ((0, half), (half, k_len)) if rule.teacher_forcing else ((0, k_len),)
    chunk_starts = {a + c for a, b in streams for c in range(0, b - a, rule.chunk)}
    sinks = {min(rule.sinks, half)} if rule.window is not None else set()
    key_cuts = sorted(chunk_starts | sinks | {0, k_len})
    shift = k_len - q_len
    row_cuts = sorted({p - shift for p in chunk_starts if 0 < p - shift < q_len} | {0, q_len})
    rows = torch.tensor(row_cuts[:-1], dtype=torch.int64)
    keys = torch.tensor(key_cuts[:-1], dtype=torch.int64)
    seen = rule.admits(rows[:, None] + shift, keys[None, :], k_len).tolist()
    spans: list[tuple[int, int, Spans]] = []
    for i, flags in enumerate(seen):
        pattern = _runs(flags, key_cuts)
        if spans and spans[-1][2] == pattern:
            spans[-1] = (spans[-1][0], row_cuts[i + 1], pattern)
        else:
            spans.append((row_cuts[i], row_cuts[i + 1], pattern))
    return tuple(span for span in spans if span[2])


def superblocks(q_len: int, k_len: int, rule: Rule, g: int) -> tuple[Superblock, ...] | None:
    """A segment's :func:`row_spans` in superblocks of ``g`` (the last may hold fewer);
    None if a masked piece would exceed :data:`MASKED_ELEMENTS`."""
    spans = row_spans(q_len, k_len, rule)
    blocks = tuple(_superblock(spans[i:i + g], k_len - q_len, k_len, rule)
                   for i in range(0, len(spans), g))
    return None if None in blocks else blocks


def cpu_costs(dtype: torch.dtype, head_dim: int, backward: bool) -> dict[str, CallCost]:
    """The measured CPU cost model of fused calls in ``dtype`` (bf16, or fp32 for the
    others, which the torch backends compute in fp32) at the nearest calibrated head dim:
    ``{"unmasked" | "masked" | "causal": CallCost}``."""
    from mirasol.ops import _cpu_costs  # it imports CallCost from here

    tables = _cpu_costs.BACKWARD if backward else _cpu_costs.FORWARD
    name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    return tables[min((key for key in tables if key[0] == name),
                      key=lambda key: abs(math.log(key[1] / head_dim)))]


def _split_cost(n: int, chunk: int, costs: dict[str, CallCost], work: int) -> float:
    # The token-causal call does rows x keys / 2 pairs; the own-chunk calls, one per chunk
    # size (the full chunks batched, a shorter last chunk), chunk x chunk each.
    full, rest = divmod(n, chunk)
    own = costs["masked"].ms(work * full, chunk, chunk) if full else 0.0
    if rest:
        own += costs["masked"].ms(work, rest, rest)
    return (costs["causal"].ms(work, n - 1, (n - 1) // 2) + own
            + work * n * costs["unmasked"].merge)


@lru_cache(maxsize=512)
def plan(q_len: int, k_len: int, rule: Rule, work: int, head_dim: int, dtype: torch.dtype,
         backward: bool, measured: bool, token_causal: bool = False
         ) -> tuple[Superblock | TokenCausalSplit, ...]:
    """The cheapest :func:`superblocks` of a segment for fused calls of ``work`` = batch x
    heads x head dim in ``dtype`` (forward or backward costs), over ``g`` = 1, 2, 4, ... and all row
    spans, and the :class:`TokenCausalSplit` where the rule allows it and ``token_causal``
    (the caller's say: as many key/value heads as query heads, no NaN in the inputs, a
    fused backward). ``measured`` False (no cost model for the device): ``g = 1``."""
    best, count = superblocks(q_len, k_len, rule, 1), len(row_spans(q_len, k_len, rule))
    if not measured or count < 2:
        return best
    costs = cpu_costs(dtype, head_dim, backward)
    best_ms = _cost(best, costs, work)
    for g in sorted({2 ** i for i in range(1, count.bit_length())} | {count}):
        blocks = superblocks(q_len, k_len, rule, g)
        if blocks is None:
            break  # larger groups only grow the masked pieces
        ms = _cost(blocks, costs, work)
        if ms < best_ms:
            best, best_ms = blocks, ms
    hides_no_chunk = rule.window is None and not rule.teacher_forcing
    if (token_causal and hides_no_chunk and q_len == k_len
            and min(rule.chunk, q_len) ** 2 <= MASKED_ELEMENTS  # its own-chunk mask
            and _split_cost(q_len, rule.chunk, costs, work) < best_ms):
        return (TokenCausalSplit(q_len, rule.chunk),)
    return best


def describe(blocks: tuple[Superblock | TokenCausalSplit, ...]) -> str:
    """A plan in words, for the benchmarks' tables."""
    if len(blocks) == 1 and isinstance(blocks[0], TokenCausalSplit):
        return "token-causal split"
    if all(len(b.pieces) == 1 and b.pieces[0].mask is None for b in blocks):
        return f"{len(blocks)} unmasked call(s), one per row span"
    if len(blocks) == 1:
        return "one masked call"
    rows = max(b.r1 - b.r0 for b in blocks)
    return f"{len(blocks)} superblocks of <= {rows} rows"


def gather(t: Tensor, spans: Spans) -> Tensor:
    """Rows ``spans`` of ``t``'s dim 2: a view for one span (the usual case), else the
    spans gathered."""
    parts = [t[:, :, a:b] for a, b in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def scatter_add(t: Tensor, spans: Spans, grad: Tensor) -> None:
    """``t[:, :, spans] += grad``, grad's dim 2 the spans in order (:func:`gather`'s
    inverse)."""
    at = 0
    for a, b in spans:
        t[:, :, a:b] += grad[:, :, at:at + b - a]
        at += b - a


def forward(block: Superblock | TokenCausalSplit, q: Tensor, k: Tensor, v: Tensor,
            scale: float, may_hold_nan: bool) -> tuple[Tensor, Tensor]:
    """(out, lse) of rows ``[block.r0, block.r1)`` of one segment: ``q`` (b, H, q_len, D)
    its queries, ``k``, ``v`` (b, H_kv, k_len, D) its keys and values. Pieces are merged
    in fp32 (lse's dtype): out is in q's dtype for a single piece, else in fp32."""
    if isinstance(block, TokenCausalSplit):
        return _split_forward(block.chunk, q, k, v, scale)
    rows = q[:, :, block.r0:block.r1]
    parts = [attention_lse(rows, gather(k, piece.spans), gather(v, piece.spans), scale,
                           piece.mask, may_hold_nan=may_hold_nan) for piece in block.pieces]
    out, lse = parts[0]
    for o, part_lse in parts[1:]:
        out, lse = merge(out.to(lse.dtype), lse, o.to(lse.dtype), part_lse)
    return out, lse


def backward(block: Superblock | TokenCausalSplit, do: Tensor, q: Tensor, k: Tensor,
             v: Tensor, out: Tensor, lse: Tensor, scale: float, may_hold_nan: bool,
             dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """Adds the gradients through rows ``[block.r0, block.r1)`` of one segment to ``dq``,
    ``dk``, ``dv`` (the segment's views of the accumulators), from the saved (merged)
    ``out`` and ``lse``: each piece's probabilities are then its share of the row's
    softmax, so the pieces' gradients add up."""
    if isinstance(block, TokenCausalSplit):
        _split_backward(block.chunk, do, q, k, v, out, lse, scale, dq, dk, dv)
        return
    rows = slice(block.r0, block.r1)
    for piece in block.pieces:
        gq, gk, gv = attention_lse_backward(
            do[:, :, rows], q[:, :, rows], gather(k, piece.spans), gather(v, piece.spans),
            out[:, :, rows], lse[:, :, rows], scale, piece.mask, may_hold_nan=may_hold_nan)
        dq[:, :, rows] += gq
        scatter_add(dk, piece.spans, gk)
        scatter_add(dv, piece.spans, gv)


def _own_chunks(n: int, chunk: int) -> list[tuple[int, int, int]]:
    """(first row, end, chunk size) of the batched full chunks and of a shorter last one."""
    full = n - n % chunk
    return [(a, b, m) for a, b, m in ((0, full, chunk), (full, n, n - full)) if b > a]


def _fold_chunks(t: Tensor, m: int) -> Tensor:
    # (b, H, c * m, ...) -> (b * c, H, m, ...): each chunk a sample of its own.
    return rearrange(t, "b h (c m) ... -> (b c) h m ...", m=m)


def _unfold_chunks(t: Tensor, batch: int) -> Tensor:
    return rearrange(t, "(b c) h m ... -> b h (c m) ...", b=batch)


@lru_cache(maxsize=64)
def _from_own_position(m: int) -> Tensor:
    # Row i of a chunk sees its keys j >= i: the part of its own chunk causality leaves out.
    return torch.ones(m, m, dtype=torch.bool).triu()


def _split_forward(chunk: int, q: Tensor, k: Tensor, v: Tensor, scale: float):
    acc = torch.promote_types(q.dtype, torch.float32)  # merged in fp32 for bf16 pieces
    out, lse = q.new_empty(q.shape, dtype=acc), q.new_empty(q.shape[:3], dtype=acc)
    for a, b, m in _own_chunks(q.shape[2], chunk):
        o, l = attention_lse(*(_fold_chunks(t[:, :, a:b], m) for t in (q, k, v)), scale,
                             _from_own_position(m), may_hold_nan=False)
        out[:, :, a:b] = _unfold_chunks(o, q.shape[0])
        lse[:, :, a:b] = _unfold_chunks(l, q.shape[0])
    if q.shape[2] > 1:
        # Row p (from 1) against keys < p: top-left causal over q[1:] and k[:-1], merged in
        # place (merge's arithmetic).
        before, lse_before = attention_lse(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1], scale,
                                           causal=True, may_hold_nan=False)
        own, lse_own = out[:, :, 1:], lse[:, :, 1:]
        own.lerp_(before.to(acc), torch.sigmoid(lse_before - lse_own)[..., None])
        lse_own.copy_(torch.logaddexp(lse_own, lse_before))
    return out, lse


def _split_backward(chunk, do, q, k, v, out, lse, scale, dq, dk, dv) -> None:
    for a, b, m in _own_chunks(q.shape[2], chunk):
        grads = attention_lse_backward(
            *(_fold_chunks(t[:, :, a:b], m) for t in (do, q, k, v, out, lse)), scale,
            _from_own_position(m), may_hold_nan=False)
        for acc, grad in zip((dq, dk, dv), grads):
            acc[:, :, a:b] += _unfold_chunks(grad, q.shape[0])
    if q.shape[2] > 1:
        gq, gk, gv = attention_lse_backward(
            do[:, :, 1:], q[:, :, 1:], k[:, :, :-1], v[:, :, :-1], out[:, :, 1:],
            lse[:, :, 1:], scale, causal=True, may_hold_nan=False)
        dq[:, :, 1:] += gq
        dk[:, :, :-1] += gk
        dv[:, :, :-1] += gv


def merge(o: Tensor, lse: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Two partial attentions of the same rows over disjoint keys, as one: ``o`` and ``o2``
    weighted by ``exp(lse_i - logaddexp(lse, lse2))``, i.e. ``o2``'s weight is
    ``sigmoid(lse2 - lse)``, one fused pass (``lerp``) over the outputs. Neither lse is
    -inf (every row of a piece sees a key); a NaN in either reaches the row."""
    return torch.lerp(o, o2, torch.sigmoid(lse2 - lse)[..., None]), torch.logaddexp(lse, lse2)
