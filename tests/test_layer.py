"""ChunkedCausalSelfAttention: a drop-in for timm's Attention, chunked."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mirasol import ChunkedCausalSelfAttention, CrossModalAttention
from mirasol.layers import RotaryEmbedding
from mirasol.testing import assert_identical, assert_parity, parity_report


class TimmAttention(nn.Module):
    """timm.models.vision_transformer.Attention as published (timm depends on torchvision,
    which does not import beside the CPU torch build, so it is transcribed here)."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_norm=False, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x, attn_mask=None):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("qkv_bias,qk_norm", [(False, False), (True, True)])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_loads_timm_weights_and_matches_it(backend, qkv_bias, qk_norm):
    timm = TimmAttention(64, num_heads=4, qkv_bias=qkv_bias, qk_norm=qk_norm).double()
    ours = ChunkedCausalSelfAttention(64, num_heads=4, chunk_size=5, qkv_bias=qkv_bias,
                                      qk_norm=qk_norm, backend=backend)
    assert ours.state_dict().keys() == timm.state_dict().keys()
    ours.load_state_dict(timm.state_dict())  # strict: same keys, same shapes
    x = torch.randn(2, 23, 64, dtype=torch.float64)
    chunk = torch.arange(23) // 5
    oracle = timm(x, attn_mask=chunk[None, :] <= chunk[:, None])
    got = ours(x.float())
    ref = ChunkedCausalSelfAttention(64, num_heads=4, chunk_size=5, qkv_bias=qkv_bias,
                                     qk_norm=qk_norm, backend="reference")
    ref.load_state_dict(timm.state_dict())
    assert_parity(parity_report("out", got, ref(x.float()), oracle))
    # One chunk covering the sequence is exactly timm's (unmasked) attention.
    ours.chunk_size = ref.chunk_size = 23
    assert_parity(parity_report("out", ours(x.float()), ref(x.float()), timm(x)))


def test_grouped_query_heads_and_backward():
    layer = ChunkedCausalSelfAttention(48, num_heads=6, num_kv_heads=2, chunk_size=4)
    assert layer.qkv.out_features == (6 + 2 * 2) * 8
    x = torch.randn(2, 10, 48, requires_grad=True)
    layer(x, lengths=torch.tensor([10, 7])).sum().backward()
    assert x.grad is not None and layer.qkv.weight.grad is not None
    # Padded tokens of sample 1 do not influence its valid tokens.
    assert not x.grad[1, 7:].any()


def test_rope_rotates_pairs_and_keeps_the_state_dict():
    plain = ChunkedCausalSelfAttention(32, num_heads=2, chunk_size=4)
    rotary = ChunkedCausalSelfAttention(32, num_heads=2, chunk_size=4, rope=True)
    assert plain.state_dict().keys() == rotary.state_dict().keys()
    rope = RotaryEmbedding(16)
    x = torch.randn(1, 1, 5, 16, dtype=torch.float64)
    y = rope(x)
    # A rotation: norms of each (i, i + D/2) pair are kept, position 0 is unchanged.
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    # Relative: q·k depends only on the offset between positions.
    q, k = torch.randn(2, 16, dtype=torch.float64)
    qs, ks = q.expand(1, 1, 9, 16), k.expand(1, 1, 9, 16)
    dots = (rope(qs)[0, 0, 3:] * rope(ks)[0, 0, :6]).sum(-1)
    torch.testing.assert_close(dots, dots[:1].expand(6))


def test_extra_repr_and_bad_configs():
    text = repr(ChunkedCausalSelfAttention(64, num_heads=8, num_kv_heads=2, chunk_size=16))
    assert "num_heads=8, num_kv_heads=2, head_dim=8, chunk_size=16, backend='auto'" in text
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by num_heads \(4\)"):
        ChunkedCausalSelfAttention(30, num_heads=4, chunk_size=2)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads"):
        ChunkedCausalSelfAttention(32, num_heads=4, num_kv_heads=3, chunk_size=2)
    with pytest.raises(ValueError, match="head_dim must be even"):
        RotaryEmbedding(15)


def _mha_inputs(B=3, Lq=7, Lk=11, dim=32, kdim=24, vdim=20, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(B, Lq, dim, generator=gen, dtype=dtype),
            torch.randn(B, Lk, kdim, generator=gen, dtype=dtype),
            torch.randn(B, Lk, vdim, generator=gen, dtype=dtype))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("kdim,vdim", [(24, 20), (32, 32)])
def test_cross_modal_attention_swaps_in_for_multihead_attention(backend, kdim, vdim):
    mha = nn.MultiheadAttention(32, 4, kdim=kdim, vdim=vdim, batch_first=True).double()
    x, ctx, val = _mha_inputs(kdim=kdim, vdim=vdim)
    lengths = torch.tensor([11, 3, 8])
    padding = torch.arange(11)[None, :] >= lengths[:, None]  # True = ignore, as in MHA
    oracle, _ = mha(x, ctx, val, key_padding_mask=padding, need_weights=False)

    ours = CrossModalAttention.from_multihead_attention(mha.float(), backend=backend)
    ref = CrossModalAttention.from_multihead_attention(mha, backend="reference").float()
    args = (x.float(), ctx.float(), val.float())
    got = ours(*args, context_lengths=lengths)
    assert_parity(parity_report("out", got, ref(*args, context_lengths=lengths), oracle))
    # Queries are never masked by key padding: every query row is a real output.
    assert got.abs().sum(-1).gt(0).all()


def test_cross_modal_attention_packed_equals_padded():
    layer = CrossModalAttention(32, 24, num_heads=4, num_kv_heads=2)
    x, ctx, _ = _mha_inputs(kdim=24, dtype=torch.float32)
    lengths = torch.tensor([11, 3, 8])
    padded = layer(x, ctx, context_lengths=lengths)
    cu_q = torch.tensor([0, 7, 14, 21], dtype=torch.int32)
    cu_k = torch.tensor([0, 11, 14, 22], dtype=torch.int32)
    ctx_packed = torch.cat([ctx[b, :n] for b, n in enumerate(lengths.tolist())])
    packed = layer(x.flatten(0, 1), ctx_packed, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    torch.testing.assert_close(packed, padded.flatten(0, 1))


def test_cross_modal_attention_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match=r"attention dropout \(0.1\) is not supported"):
        CrossModalAttention.from_multihead_attention(nn.MultiheadAttention(16, 2, dropout=0.1))
    with pytest.raises(ValueError, match="add_bias_kv and add_zero_attn are not supported"):
        CrossModalAttention.from_multihead_attention(
            nn.MultiheadAttention(16, 2, add_bias_kv=True))
    text = repr(CrossModalAttention(64, 48, num_heads=8, num_kv_heads=2, causal=True))
    assert "num_heads=8, num_kv_heads=2, head_dim=8, causal=True, backend='auto'" in text
    assert "(k_proj): Linear(in_features=48, out_features=16" in text


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_causal_self_attention_cache_equals_full_recompute(backend):
    """Right-padded prompts prefilled into the cache, then one token per step at each
    sample's own position: every valid row equals the no-cache forward of the sequence."""
    from mirasol.layers import CausalSelfAttention, KVCache

    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4, num_kv_heads=2, backend=backend)
    lengths = torch.tensor([5, 2, 7])
    steps = 3
    x = torch.randn(3, 7 + steps, 32)
    cache = KVCache.empty(3, 2, 8, 7 + steps, dtype=x.dtype)
    layer(x[:, :7], cache, torch.zeros(3, dtype=torch.long))  # prefill, padded to 7
    got = []
    for s in range(steps):
        new = torch.stack([x[b, lengths[b] + s] for b in range(3)])[:, None]
        got.append(layer(new, cache, lengths + s))
    for b in range(3):
        seq = torch.cat([x[b, :lengths[b]]] + [torch.stack([x[b, lengths[b] + s]])
                                                for s in range(steps)])
        full = layer(seq[None])
        torch.testing.assert_close(torch.cat([g[b] for g in got]), full[0, -steps:])
    with pytest.raises(ValueError, match="capacity"):
        layer(x[:, :4], cache, lengths + 7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_window_and_sinks_match_timm_under_the_familys_mask(backend):
    """The whole-sequence forward applies the window and sinks: timm's attention with the
    dense mask of mirasol.masks is the oracle."""
    from mirasol import masks

    timm = TimmAttention(32, num_heads=2).double()
    family = dict(chunk_size=3, window_chunks=2, sink_tokens=4)
    ours = ChunkedCausalSelfAttention(32, num_heads=2, backend=backend, **family)
    ref = ChunkedCausalSelfAttention(32, num_heads=2, backend="reference", **family)
    ours.load_state_dict(timm.state_dict())
    ref.load_state_dict(timm.state_dict())
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    mask = masks.chunked_causal(17, 3, window_chunks=2, sink_tokens=4).dense()
    assert_parity(parity_report("out", ours(x.float()), ref(x.float()), timm(x, mask)))
    assert "chunk_size=3, window_chunks=2, sink_tokens=4, backend=" in repr(ours)


def test_default_forward_is_the_plain_chunked_op_bit_for_bit():
    """window_chunks=None, sink_tokens=0 (the defaults) compute what the layer computed
    before the family existed: the op called with the chunk size alone."""
    from mirasol.ops import chunked_causal_attention

    layer = ChunkedCausalSelfAttention(32, num_heads=4, num_kv_heads=2, chunk_size=3,
                                       rope=True, backend="torch")
    x = torch.randn(2, 11, 32)
    lengths = torch.tensor([11, 6])
    q, k, v = layer.qkv(x).view(2, 11, 8, 8).transpose(1, 2).split((4, 2, 2), dim=1)
    out = chunked_causal_attention(layer.rope(q), layer.rope(k), v, 3, lengths=lengths,
                                   backend="torch")
    assert_identical(layer(x, lengths), layer.proj(out.transpose(1, 2).reshape(2, 11, 32)))
