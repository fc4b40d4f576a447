"""Hypothesis strategies for attention problems (requires ``hypothesis``).

``attention_cases(...)`` draws an :class:`AttentionCase`: shapes, grouped-query heads,
chunk size, per-sample lengths, dtype and memory layout; ``case.tensors(device)`` builds
deterministic inputs from the case's seed.
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import strategies as st

from mirasol.testing.cases import (HEAD_DIMS, LAYOUTS, AttentionCase, CrossAttentionCase,
                                   PackedChunkedCase, TokenPoolCase)

__all__ = ["AttentionCase", "CrossAttentionCase", "PackedChunkedCase", "TokenPoolCase",
           "attention_cases", "cross_attention_cases", "family_cases", "packed_family_cases",
           "token_pool_cases", "HEAD_DIMS", "LAYOUTS"]


@st.composite
def attention_cases(draw, *, max_batch: int = 3, max_heads: int = 4, max_seqlen: int = 80,
                    head_dims=HEAD_DIMS, dtypes=(torch.float32, torch.float16),
                    layouts=LAYOUTS, max_chunk: int | None = None,
                    allow_lengths: bool = True) -> AttentionCase:
    """Attention problems for chunked causal attention. Chunk sizes range from 1 to past
    the sequence length (so one chunk and one token per chunk are both drawn)."""
    batch = draw(st.integers(1, max_batch))
    kv_heads = draw(st.integers(1, max_heads))
    group = draw(st.sampled_from([g for g in (1, 2, 4) if kv_heads * g <= max(max_heads, 1)]
                                 or [1]))
    seqlen = draw(st.integers(1, max_seqlen))
    chunk_size = draw(st.integers(1, max_chunk or seqlen + 4))
    lengths = None
    if allow_lengths and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(0, seqlen), min_size=batch, max_size=batch)))
    return AttentionCase(
        batch=batch, heads=kv_heads * group, kv_heads=kv_heads, seqlen=seqlen,
        head_dim=draw(st.sampled_from(head_dims)), chunk_size=chunk_size, lengths=lengths,
        dtype=draw(st.sampled_from(dtypes)), layout=draw(st.sampled_from(layouts)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _window_and_sinks(draw, n: int, chunk: int) -> tuple[int | None, int]:
    # Windows from one chunk to past the number of chunks; sinks inside the first chunk,
    # spanning chunks, or none.
    chunks = -(-max(n, 1) // chunk)
    if not draw(st.booleans()):
        return None, 0
    return draw(st.integers(1, chunks + 1)), draw(st.integers(0, n))


@st.composite
def family_cases(draw, *, max_seqlen: int = 48, **kwargs) -> AttentionCase:
    """Padded problems of the whole block-causal family: windows and sinks, cache prefills
    (fewer queries than keys: a chunk or several, or one query, against a longer prefix)
    and teacher forcing (2L rows), with ``attention_cases``' shapes, dtypes and layouts."""
    case = draw(attention_cases(max_seqlen=max_seqlen, **kwargs))
    n, chunk = case.seqlen, case.chunk_size
    window, sinks = _window_and_sinks(draw, n, chunk)
    form = draw(st.sampled_from(("plain", "prefill", "teacher_forcing")))
    fields = dict(window=window, sinks=sinks)
    if form == "prefill":
        fields |= dict(lengths=None, k_seqlen=n + draw(st.integers(1, max_seqlen)))
    elif form == "teacher_forcing":
        fields |= dict(lengths=None, seqlen=2 * max(1, n // 2), teacher_forcing=True)
    return dataclasses.replace(case, **fields)


@st.composite
def packed_family_cases(draw, **kwargs) -> PackedChunkedCase:
    """Packed segments (empty ones included) with q_len <= k_len each, a chunk size, and
    the family's window and sinks."""
    segments = draw(cross_attention_cases(causal=(False,), **kwargs))
    extra = draw(st.lists(st.integers(0, 20), min_size=len(segments.q_lens),
                          max_size=len(segments.q_lens)))
    k_lens = tuple(q + e for q, e in zip(segments.q_lens, extra))
    segments = dataclasses.replace(segments, k_lens=k_lens)
    chunk = draw(st.integers(1, max(k_lens, default=0) + 4))
    window, sinks = _window_and_sinks(draw, max(k_lens, default=0), chunk)
    return PackedChunkedCase(segments, chunk, window, sinks)


@st.composite
def cross_attention_cases(draw, *, max_batch: int = 4, max_heads: int = 4, max_len: int = 40,
                          head_dims=HEAD_DIMS, dtypes=(torch.float32, torch.float16),
                          causal=(False, True), min_keys: int = 0) -> CrossAttentionCase:
    """Segments for cross-attention: empty, one-token and odd lengths, Lq != Lk."""
    batch = draw(st.integers(1, max_batch))
    lengths = st.lists(st.integers(0, max_len), min_size=batch, max_size=batch)
    keys = st.lists(st.integers(min_keys, max_len), min_size=batch, max_size=batch)
    kv_heads = draw(st.integers(1, max_heads))
    group = draw(st.sampled_from([g for g in (1, 2, 4) if kv_heads * g <= max_heads] or [1]))
    return CrossAttentionCase(
        q_lens=tuple(draw(lengths)), k_lens=tuple(draw(keys)), heads=kv_heads * group,
        kv_heads=kv_heads, head_dim=draw(st.sampled_from(head_dims)),
        causal=draw(st.sampled_from(causal)), dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def token_pool_cases(draw, *, max_batch: int = 4, max_len: int = 70, max_tokens: int = 40,
                     dims=(16, 24, 40, 64, 100), dtypes=(torch.float32, torch.float16)
                     ) -> TokenPoolCase:
    """Segments (empty and one-token ones included), output token counts from 1, logits
    from tame to overflowing-if-naive."""
    batch = draw(st.integers(1, max_batch))
    return TokenPoolCase(
        lens=tuple(draw(st.lists(st.integers(0, max_len), min_size=batch, max_size=batch))),
        dim=draw(st.sampled_from(dims)), num_tokens=draw(st.integers(1, max_tokens)),
        logit_scale=draw(st.sampled_from((1.0, 4.0, 1000.0))),
        dtype=draw(st.sampled_from(dtypes)), seed=draw(st.integers(0, 2**31 - 1)),
    )
