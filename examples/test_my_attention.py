"""Checking *your own* attention kernel against mirasol's reference, in your CI.

`pip install mirasol-kernels[test]` brings the `parity` fixture (a pytest plugin) and the
hypothesis strategies; run with `pytest --hypothesis-profile=mirasol-ci`. Here "your
kernel" is chunked causal attention written with SDPA and a hand-built mask; swap in yours.
"""

from functools import partial

import torch
import torch.nn.functional as F
from hypothesis import example, given

from mirasol.reference import chunked_causal_attention as reference
from mirasol.testing.strategies import AttentionCase, attention_cases


def my_chunked_attention(q, k, v, chunk_size):
    """Yours: (B, H, N, D) with (B, H_kv, N, D) keys and values."""
    chunk = torch.arange(q.shape[2], device=q.device) // chunk_size
    return F.scaled_dot_product_attention(q, k, v, attn_mask=chunk[None, :] <= chunk[:, None],
                                          enable_gqa=True)


@given(case=attention_cases(max_seqlen=48, allow_lengths=False, head_dims=(16, 32, 64),
                            dtypes=(torch.float32, torch.float16)))
@example(case=AttentionCase(batch=1, heads=4, kv_heads=2, seqlen=33, head_dim=32,
                            chunk_size=8, lengths=None, dtype=torch.float16,
                            layout="bnhd", seed=0))
def test_my_attention_matches_mirasol_reference(parity, case):
    q, k, v, _ = case.tensors()
    parity(partial(my_chunked_attention, chunk_size=case.chunk_size),
           partial(reference, chunk_size=case.chunk_size), (q, k, v), names="qkv",
           seed=case.seed)
