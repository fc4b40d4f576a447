"""Hypothesis strategies for attention problems (requires ``hypothesis``).

``attention_cases(...)`` draws an :class:`AttentionCase`: shapes, grouped-query heads,
chunk size, per-sample lengths, dtype and memory layout; ``case.tensors(device)`` builds
deterministic inputs from the case's seed.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from mirasol.testing.cases import (HEAD_DIMS, LAYOUTS, AttentionCase, CrossAttentionCase,
                                   TokenPoolCase)

__all__ = ["AttentionCase", "CrossAttentionCase", "TokenPoolCase", "attention_cases",
           "cross_attention_cases", "token_pool_cases", "HEAD_DIMS", "LAYOUTS"]


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
