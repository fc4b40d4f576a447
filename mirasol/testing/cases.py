"""Attention test problems as plain data: what the hypothesis strategies draw and what
``mirasol check`` runs (no hypothesis needed here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirasol.masks import cu_seqlens

# Layouts an input can arrive in: contiguous (B, H, N, D); "bnhd": a (B, N, H, D) buffer
# viewed as (B, H, N, D) (projections reshaped without a copy); "padded": a view into a
# buffer with a larger head dim (non-unit row stride, gaps between rows).
LAYOUTS = ("contiguous", "bnhd", "padded")
HEAD_DIMS = (16, 24, 32, 40, 64, 80, 96, 112, 128, 256)


@dataclass(frozen=True)
class AttentionCase:
    """A padded chunked-attention problem: ``seqlen`` queries against ``k_seqlen`` keys
    (default ``seqlen``; more: the queries are the last positions, a cache prefill), and
    the family's mask parameters (``mirasol.masks.Rule``)."""

    batch: int
    heads: int
    kv_heads: int
    seqlen: int
    head_dim: int
    chunk_size: int
    lengths: tuple[int, ...] | None
    dtype: torch.dtype
    layout: str
    seed: int
    k_seqlen: int | None = None
    window: int | None = None
    sinks: int = 0
    teacher_forcing: bool = False

    @property
    def mask_args(self) -> dict:
        """The op's mask keywords for this case (``lengths`` as a tensor is separate)."""
        return dict(window_chunks=self.window, sink_tokens=self.sinks,
                    teacher_forcing=self.teacher_forcing)

    def _make(self, heads: int, rows: int, gen: torch.Generator, device) -> torch.Tensor:
        B, D = self.batch, self.head_dim
        if self.layout == "bnhd":
            x = torch.randn(B, rows, heads, D, generator=gen).transpose(1, 2)
        elif self.layout == "padded":
            x = torch.randn(B, heads, rows, D + 8, generator=gen)[..., 3:3 + D]
        else:
            x = torch.randn(B, heads, rows, D, generator=gen)
        return x.to(device=device, dtype=self.dtype)

    def tensors(self, device="cpu"):
        """(q, k, v, lengths) for this case; lengths is an int32 tensor or None."""
        gen = torch.Generator().manual_seed(self.seed)
        n_k = self.seqlen if self.k_seqlen is None else self.k_seqlen
        q = self._make(self.heads, self.seqlen, gen, device)
        k = self._make(self.kv_heads, n_k, gen, device)
        v = self._make(self.kv_heads, n_k, gen, device)
        lengths = (None if self.lengths is None
                   else torch.tensor(self.lengths, dtype=torch.int32, device=device))
        return q, k, v, lengths


@dataclass(frozen=True)
class CrossAttentionCase:
    """Segments of queries and keys: q_lens[b] queries attend to k_lens[b] keys."""

    q_lens: tuple[int, ...]
    k_lens: tuple[int, ...]
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    dtype: torch.dtype
    seed: int

    def packed(self, device="cpu"):
        """(q, k, v, cu_seqlens_q, cu_seqlens_k): q (sum q_lens, H, D), k and v
        (sum k_lens, H_kv, D), cu_seqlens int32."""
        gen = torch.Generator().manual_seed(self.seed)

        def make(rows, heads):
            return torch.randn(rows, heads, self.head_dim, generator=gen).to(device, self.dtype)

        q = make(sum(self.q_lens), self.heads)
        k, v = make(sum(self.k_lens), self.kv_heads), make(sum(self.k_lens), self.kv_heads)
        return q, k, v, cu_seqlens(self.q_lens, device), cu_seqlens(self.k_lens, device)

    def padded(self, device="cpu"):
        """(q, k, v, k_lengths) of the same problem in SDPA's layout, zero-padded: sample b
        has Lq = max(q_lens) query rows (those past q_lens[b] are padding) and k_lens[b]
        valid keys of Lk = max(k_lens)."""
        q, k, v, cu_q, cu_k = self.packed(device)
        return (*(_pad(t, cu, max(lens, default=0)) for t, cu, lens in
                  ((q, cu_q, self.q_lens), (k, cu_k, self.k_lens), (v, cu_k, self.k_lens))),
                torch.tensor(self.k_lens, dtype=torch.int32, device=device))


@dataclass(frozen=True)
class PackedChunkedCase:
    """Chunked attention on packed segments (``segments``: their query and key lengths,
    q_lens[b] <= k_lens[b], heads, dtype; its ``causal`` unused), chunks restarting at each
    segment, with the family's window and sinks."""

    segments: CrossAttentionCase
    chunk_size: int
    window: int | None = None
    sinks: int = 0

    @property
    def mask_args(self) -> dict:
        return dict(window_chunks=self.window, sink_tokens=self.sinks)


def _pad(x: torch.Tensor, cu: torch.Tensor, rows: int) -> torch.Tensor:
    """Packed (total, H, D) -> padded (B, H, rows, D), zeros past each segment."""
    out = x.new_zeros(cu.numel() - 1, x.shape[1], rows, x.shape[2])
    for b, (start, end) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        out[b, :, :end - start] = x[start:end].transpose(0, 1)
    return out


@dataclass(frozen=True)
class TokenPoolCase:
    """Segments of tokens (lens) pooled into num_tokens outputs; logits drawn at a scale
    (large scales make one-hot softmaxes and test overflow)."""

    lens: tuple[int, ...]
    dim: int
    num_tokens: int
    logit_scale: float
    dtype: torch.dtype
    seed: int

    def packed(self, device="cpu"):
        """(x (total, dim), logits (total, num_tokens), cu_seqlens int32)."""
        gen = torch.Generator().manual_seed(self.seed)
        total = sum(self.lens)
        x = torch.randn(total, self.dim, generator=gen).to(device, self.dtype)
        logits = (torch.randn(total, self.num_tokens, generator=gen) * self.logit_scale)
        return x, logits.to(device, self.dtype), cu_seqlens(self.lens, device)

    def padded(self, device="cpu"):
        """(x (B, N, dim), logits (B, N, num_tokens), lengths) of the same problem."""
        x, logits, cu = self.packed(device)
        rows = max(self.lens, default=0)
        return (_pad(x[:, None], cu, rows)[:, 0], _pad(logits[:, None], cu, rows)[:, 0],
                torch.tensor(self.lens, dtype=torch.int32, device=device))
