"""Bad inputs raise errors that name the argument, before any kernel launches."""

import re

import pytest
import torch

from mirasol.ops import BackendUnavailable, chunked_causal_attention


def _qkv(B=2, H=4, H_kv=2, N=8, D=16, dtype=torch.float32):
    return (torch.randn(B, H, N, D, dtype=dtype), torch.randn(B, H_kv, N, D, dtype=dtype),
            torch.randn(B, H_kv, N, D, dtype=dtype))


def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        chunked_causal_attention(*args, **kwargs)


@pytest.mark.parametrize("backend", ["auto", "triton", "torch", "reference"])
def test_shape_dtype_device_errors(backend):
    q, k, v = _qkv()
    _raises(ValueError, r"q must be 4-D .*got shape \(2, 4, 8\)", q[..., 0], k, v, 4,
            backend=backend)
    _raises(ValueError, r"k and v must have the same shape", q, k, v[:, :1], 4, backend=backend)
    _raises(TypeError, r"k\.dtype \(torch\.float16\) must match q\.dtype", q, k.half(),
            v.half(), 4, backend=backend)
    _raises(TypeError, r"q must be a floating-point tensor", q.long(), k, v, 4, backend=backend)
    _raises(ValueError, r"k has batch size 1 but q has 2", q, k[:1], v[:1], 4, backend=backend)
    _raises(ValueError, r"k has head dim 8 but q has 16", q, k[..., :8], v[..., :8], 4,
            backend=backend)
    _raises(ValueError, r"query heads \(4\) must be a multiple of .* key/value heads \(3\)", q,
            torch.randn(2, 3, 8, 16), torch.randn(2, 3, 8, 16), 4, backend=backend)
    _raises(ValueError, r"k and q of the same length, got 7 and 8", q, k[:, :, :7],
            v[:, :, :7], 4, backend=backend)
    _raises(ValueError, r"k is on meta but q is on cpu", q, k.to("meta"), v, 4, backend=backend)
    _raises(TypeError, r"q must be a torch.Tensor, got list", [1.0], k, v, 4, backend=backend)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True, None])
def test_chunk_size_must_be_a_positive_int(chunk):
    _raises(ValueError, re.escape(f"chunk_size must be a positive int, got {chunk!r}"),
            *_qkv(), chunk)


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_lengths_errors(backend):
    q, k, v = _qkv()
    _raises(TypeError, r"lengths must be int32 or int64, got torch.float32", q, k, v, 4,
            lengths=torch.tensor([1.0, 2.0]), backend=backend)
    _raises(ValueError, r"lengths must have shape \(2,\)", q, k, v, 4,
            lengths=torch.tensor([1, 2, 3]), backend=backend)
    _raises(ValueError, r"lengths must lie in \[0, 8\] .*got \[9, 2\]", q, k, v, 4,
            lengths=torch.tensor([9, 2]), backend=backend)
    _raises(ValueError, r"lengths must lie in \[0, 8\] .*got \[-1, 2\]", q, k, v, 4,
            lengths=torch.tensor([-1, 2]), backend=backend)
    _raises(TypeError, r"lengths must be a torch.Tensor or None, got list", q, k, v, 4,
            lengths=[1, 2], backend=backend)


def test_head_dim_above_256_is_refused_by_triton_with_a_reason():
    q, k, v = _qkv(D=264)
    _raises(BackendUnavailable, r"backend='triton' cannot run this call: head dim 264 exceeds "
            r"the maximum of 256", q, k, v, 4, backend="triton")
    # The torch backend has no such limit, and auto picks it on CPU.
    out = chunked_causal_attention(q, k, v, 4)
    ref = chunked_causal_attention(q, k, v, 4, backend="reference")
    torch.testing.assert_close(out, ref)


def test_unknown_backend():
    _raises(ValueError, r"backend must be one of .*got 'cuda'", *_qkv(), 4, backend="cuda")
