"""Side-by-side benchmarks of the attention ops (``mirasol bench``, bench/).

Every variant of a table runs in the same process on the same problem, one after the
other, and the table reports each one's median time and peak memory and its ratio to a
baseline: ratios, not absolute times, are what survive a noisy machine. TFLOP/s count only
the visible (query, key) pairs: useful work per second.

Tables:

* ``chunked``: chunked causal attention (N=4096, 8 heads, d=64, chunk 256). Against SDPA
  with a dense boolean mask (the usual way to express the pattern) and unmasked SDPA.
* ``cross-text``: Mirasol3B's text decoder cross-attention, 8 samples of 32-64 text queries
  against 128 audio-video latents (4 chunks x 32). Against SDPA on the padded batch with a
  key-padding mask, and SDPA on the packed tokens with a dense block-diagonal mask.
* ``cross-combiner``: the Transformer Combiner's block-diagonal attention, 16 chunks of
  about 600 tokens. Same baselines.
* ``token pooling`` (:class:`TokenPoolProblem`, in the GPU suite): the TTM Combiner's
  TokenLearner read, the triton backend against the torch composite.
* ``scaling`` (:func:`scaling`): the whole model, not one op. Forward and forward+backward
  time and peak memory of Mirasol's ``small`` preset at 128 and 512 frames (4 and 16
  chunks), against :class:`~mirasol.model.baseline.FlatBaseline` (one transformer over all
  frames' tokens). Target: 4x the frames costs Mirasol at most 4.5x the time and memory.

On CUDA the triton backend runs, and the optional rivals (:data:`CHUNKED_RIVALS`,
:data:`CROSS_RIVALS`: FlexAttention compiled with the same block mask, flash-attn, xformers)
join where they can: one that cannot be built or fails to run is listed as skipped with the
reason, never raised. Given the card's :class:`Peak`, a table also reports TFLOP/s as a
fraction of the card's dense 16-bit tensor-core peak.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol._format import format_rows
from mirasol.data.tokenizer import ByteTokenizer
from mirasol.model import Mirasol, MirasolConfig, chunk_layout, preset
from mirasol.model.baseline import FlatBaseline
from mirasol.ops import chunked_causal_attention, cross_attention, token_pool
from mirasol.reference import chunked_causal_mask, cross_attention_mask


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[..., Tensor]
    inputs: Callable[[bool], tuple[Tensor, ...]]  # requires_grad -> the fn's arguments
    note: str = ""
    optional: bool = False  # a rival: a failure to run is recorded as skipped, not raised


@dataclass(frozen=True)
class Skipped:
    """A variant that was not measured, and why."""
    name: str
    mode: str      # "fwd", "fwd+bwd", or "all" when it could not even be built
    reason: str


class Lineup(NamedTuple):
    """What a problem measures: the baseline's name, the variants (the baseline among
    them), and the rivals that could not be built here."""
    baseline: str
    variants: list[Variant]
    skipped: list[Skipped]


def _reason(error: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"[:300]


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

    def visible_pairs(self) -> int:
        """(query, key) pairs the mask lets through, per head."""
        chunks, last = divmod(self.seqlen, self.chunk_size)
        full = sum(self.chunk_size * (t + 1) * self.chunk_size for t in range(chunks))
        return self.batch * (full + last * self.seqlen)

    def flops(self, backward: bool) -> float:
        return _attention_flops(self.visible_pairs(), self.setting, backward)

    def variants(self) -> Lineup:
        C, s = self.chunk_size, self.setting
        mask = chunked_causal_mask(self.seqlen, C, s.device)
        rows = [
            Variant(f"mirasol {s.backend}",
                    lambda q, k, v: chunked_causal_attention(q, k, v, C, backend=s.backend),
                    self.inputs),
            Variant("SDPA dense mask",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                    self.inputs, "N x N bool mask"),
            Variant("SDPA unmasked", F.scaled_dot_product_attention, self.inputs,
                    "all N^2 scores"),
            Variant("SDPA causal",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    self.inputs, "token-causal, not chunked"),
        ]
        rivals, skipped = _build_rivals(CHUNKED_RIVALS, self)
        return Lineup("SDPA dense mask", rows + rivals, skipped)


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
        return _cu_seqlens(lens, self.setting.device)

    def segment_ids(self, lens) -> Tensor:
        """(sum(lens),) the segment of each packed row."""
        device = self.setting.device
        return torch.repeat_interleave(torch.arange(len(lens), device=device),
                                       torch.tensor(lens, device=device))

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

    def visible_pairs(self) -> int:
        return sum(nq * nk for nq, nk in zip(self.q_lens, self.k_lens))

    def flops(self, backward: bool) -> float:
        return _attention_flops(self.visible_pairs(), self.setting, backward)

    def variants(self) -> Lineup:
        s = self.setting
        cu_q, cu_k = self.cu(self.q_lens), self.cu(self.k_lens)
        max_q, max_k = max(self.q_lens), max(self.k_lens)
        block_diagonal = cross_attention_mask(sum(self.q_lens), sum(self.k_lens),
                                              cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        lengths = torch.tensor(self.k_lens, device=s.device)
        key_padding = torch.arange(max_k, device=s.device)[None, None, None, :] < \
            lengths[:, None, None, None]

        def packed_sdpa(q, k, v):
            out = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)),
                                                 attn_mask=block_diagonal)
            return out[0].transpose(0, 1)

        rows = [
            Variant(f"mirasol {s.backend}",
                    lambda q, k, v: cross_attention(q, k, v, cu_seqlens_q=cu_q,
                                                    cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                                                    max_seqlen_k=max_k, backend=s.backend),
                    self.packed, "packed"),
            Variant("SDPA padded + key mask",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                   attn_mask=key_padding),
                    self.padded, "B x Lq x Lk of work"),
            Variant("SDPA block-diagonal mask", packed_sdpa, self.packed,
                    "dense total_q x total_k mask"),
        ]
        rivals, skipped = _build_rivals(CROSS_RIVALS, self)
        return Lineup("SDPA block-diagonal mask", rows + rivals, skipped)


def _cu_seqlens(lens, device: str) -> Tensor:
    """int32 (len(lens) + 1,) segment bounds (0, ..., sum(lens))."""
    return torch.tensor((0, *accumulate(lens)), dtype=torch.int32, device=device)


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
        cu = _cu_seqlens(self.seg_lens, self.setting.device)
        backends = dict.fromkeys((self.setting.backend, "torch"))  # triton first on CUDA
        rows = [Variant(f"mirasol {b}",
                        functools.partial(_token_pool_call, cu_seqlens=cu, backend=b),
                        self.inputs, "" if b == "triton" else "masked softmax + bmm, fp32")
                for b in backends]
        return Lineup("mirasol torch", rows, [])


def _token_pool_call(x: Tensor, logits: Tensor, *, cu_seqlens: Tensor, backend: str) -> Tensor:
    return token_pool(x, logits, cu_seqlens=cu_seqlens, backend=backend)


# --------------------------------------------------------------------- optional rivals


@dataclass(frozen=True)
class Rival:
    """A competitor from an optional package or torch feature. ``make(problem)`` builds its
    :class:`Variant` and raises if it cannot (package missing, shape unsupported): the
    reason is then listed as skipped. The standard rivals are CUDA only, where they are
    compared: flash-attn's and xformers' attention need a GPU, and FlexAttention on CPU has
    no backward."""
    name: str
    make: Callable[[Any], Variant]
    cuda_only: bool = True


def _build_rivals(rivals: list[Rival], problem) -> tuple[list[Variant], list[Skipped]]:
    built, skipped = [], []
    for rival in rivals:
        if rival.cuda_only and problem.setting.device == "cpu":
            skipped.append(Skipped(rival.name, "all", "CUDA only"))
            continue
        try:
            built.append(rival.make(problem))
        except Exception as e:  # noqa: BLE001 -- any failure of an optional rival is a skip
            skipped.append(Skipped(rival.name, "all", _reason(e)))
    return built, skipped


def _flex(mask_mod, batch: int, q_rows: int, k_rows: int, inputs, device: str) -> Variant:
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # A fresh dynamo cache per table: the compiles of earlier tables would otherwise use up
    # the recompile limit, after which torch.compile silently runs flex_attention eagerly.
    torch._dynamo.reset()
    block_mask = create_block_mask(mask_mod, batch if batch > 1 else None, None, q_rows, k_rows,
                                   device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return Variant("FlexAttention", lambda q, k, v: compiled(q, k, v, block_mask=block_mask),
                   inputs, "compiled, same block mask", optional=True)


def _flex_chunked(problem: ChunkedProblem) -> Variant:
    size = problem.chunk_size
    return _flex(lambda b, h, i, j: j // size <= i // size, problem.batch, problem.seqlen,
                 problem.seqlen, problem.inputs, problem.setting.device)


def _flash_causal(problem: ChunkedProblem) -> Variant:
    from flash_attn import flash_attn_func

    # flash-attn takes (B, N, H, D); token-causal does about as much work as chunk size 1.
    return Variant("flash-attn causal",
                   lambda q, k, v: flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)),
                                                   causal=True).transpose(1, 2),
                   problem.inputs, "token-causal, not chunked", optional=True)


def _flex_cross(problem: CrossProblem) -> Variant:
    seg_q, seg_k = problem.segment_ids(problem.q_lens), problem.segment_ids(problem.k_lens)
    return _flex(lambda b, h, i, j: seg_q[i] == seg_k[j], 1, sum(problem.q_lens),
                 sum(problem.k_lens), problem.packed_4d, problem.setting.device)


def _flash_varlen(problem: CrossProblem) -> Variant:
    from flash_attn import flash_attn_varlen_func

    cu_q, cu_k = problem.cu(problem.q_lens), problem.cu(problem.k_lens)
    max_q, max_k = max(problem.q_lens), max(problem.k_lens)
    return Variant("flash_attn_varlen_func",
                   lambda q, k, v: flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k),
                   problem.packed, "packed", optional=True)


def _xformers_block_diagonal(problem: CrossProblem) -> Variant:
    from xformers.ops import memory_efficient_attention
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    bias = BlockDiagonalMask.from_seqlens(list(problem.q_lens), list(problem.k_lens))
    return Variant("xformers BlockDiagonalMask",
                   lambda q, k, v: memory_efficient_attention(q[None], k[None], v[None],
                                                              attn_bias=bias)[0],
                   problem.packed, "packed", optional=True)


# Looked up when a problem builds its lineup, so a caller (or a test) can change them.
CHUNKED_RIVALS = [Rival("FlexAttention", _flex_chunked), Rival("flash-attn", _flash_causal)]
CROSS_RIVALS = [Rival("FlexAttention", _flex_cross), Rival("flash-attn", _flash_varlen),
                Rival("xformers", _xformers_block_diagonal)]


# ------------------------------------------------------------------ the card's peak


@dataclass(frozen=True)
class Peak:
    """The card's dense tensor-core peak for one dtype, or why there is none."""
    tflops: float | None   # TFLOP/s; None: unknown card or dtype, so fractions are "n/a"
    note: str              # the matched entry and its source, or the reason for n/a


# Dense (no 2:4 sparsity) fp16/bf16 tensor-core peaks with fp32 accumulation, TFLOP/s, keyed by
# a pattern of torch.cuda.get_device_name(); the first match wins, so variants come before
# the plain name, and word boundaries keep A10 from matching A100 and L4 from L40S. NVIDIA's
# datasheets print the sparse figure: the dense one is half.
#   A100 SXM/PCIe: A100 datasheet, BF16/FP16 312 (624 sparse), both form factors.
#   H100 SXM / PCIe / NVL: H100 datasheet, 1,979 / 1,513 / 1,671 sparse.
#   H200 (SXM): H200 datasheet, 1,979 sparse (the H200 NVL card is lower: not listed).
#   L4: L4 datasheet, FP16 242 sparse.  A10: A10 datasheet, BF16 125 (250 sparse).
#   L40S: L40S datasheet, BF16 362.05 (733 sparse).
#   GeForce RTX 4090: Ada architecture whitepaper, FP16 with FP32 accumulate 165.2 (330.4
#   sparse); the RTX 4090 D is cut down: not listed.
#   B200 (HGX, 1000 W): HGX B200 datasheet, FP16/BF16 4.5 PFLOPS sparse.
PEAKS_16BIT: tuple[tuple[str, float, str], ...] = (
    (r"\bA100\b", 312.0, "A100 (NVIDIA A100 datasheet)"),
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe (NVIDIA H100 datasheet)"),
    (r"\bH100\b.*\bNVL\b", 835.0, "H100 NVL (NVIDIA H100 datasheet)"),
    (r"\bH100\b.*\b(SXM|HBM3)\b", 989.0, "H100 SXM (NVIDIA H100 datasheet)"),
    (r"\bH200\b(?!.*\bNVL\b)", 989.0, "H200 SXM (NVIDIA H200 datasheet)"),
    (r"\bL4\b", 121.0, "L4 (NVIDIA L4 datasheet)"),
    (r"\bA10\b", 125.0, "A10 (NVIDIA A10 datasheet)"),
    (r"\bL40S\b", 362.0, "L40S (NVIDIA L40S datasheet)"),
    (r"\bRTX 4090\b(?! D\b)", 165.0, "GeForce RTX 4090 (NVIDIA Ada architecture whitepaper)"),
    (r"\bB200\b", 2250.0, "B200 HGX (NVIDIA HGX B200 datasheet)"),
)


def card_peak(device_name: str, dtype: torch.dtype) -> Peak:
    """The dense tensor-core peak of the card named ``device_name`` (as
    ``torch.cuda.get_device_name()`` spells it) for inputs of ``dtype``: known for fp16 and
    bf16 on the cards of :data:`PEAKS_16BIT`, otherwise n/a with the reason (never a guess)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return Peak(None, f"no peak for {str(dtype).removeprefix('torch.')} inputs: the table "
                          "holds dense 16-bit tensor-core peaks")
    for pattern, tflops, source in PEAKS_16BIT:
        if re.search(pattern, device_name, re.IGNORECASE):
            return Peak(tflops, f"{tflops:g} TFLOP/s dense 16-bit tensor core, {source}")
    return Peak(None, f"{device_name!r} is not in mirasol.benchmark.PEAKS_16BIT: no fraction "
                      "rather than a guess")


def card_slug(device_name: str) -> str:
    """A file name for the card: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"


# ------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    name: str
    mode: str                 # "fwd" or "fwd+bwd"
    median_ms: float
    peak_mib: float | None    # memory the call added at its peak
    tflops: float
    ratio: float | None = None      # time / baseline time
    mem_ratio: float | None = None  # peak / baseline peak
    note: str = ""
    peak_fraction: float | None = None  # tflops / the card's dense peak (Table.peak)


@dataclass
class Table:
    title: str
    setting: Setting
    device_name: str
    baseline: str
    rows: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    peak: Peak | None = None  # None: no fraction column (CPU); Peak(None, why): "n/a"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    # The profiler's C++ side logs a line to fd 2 at every start and stop.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _peak_mib(fn: Callable[[], object], device: str) -> float | None:
    """Memory the call adds at its peak, as PyTorch's allocator sees it: CUDA allocator
    stats on GPU; on CPU, the allocation timeline recorded by the profiler (every tensor,
    including those allocated inside fused ops). None where neither is available."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                     profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def _median_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(variant: Variant, problem, *, backward: bool, reps: int = 5,
            warmup: int = 1) -> Measurement:
    """Time the variant's forward (and backward) on its inputs."""
    args = variant.inputs(backward)
    leaves = [t for t in args if t.requires_grad]
    with torch.no_grad():
        grad_out = torch.randn_like(variant.fn(*args)) if backward else None

    def call():
        if backward:
            variant.fn(*args).backward(grad_out)
            for t in leaves:
                t.grad = None
        else:
            with torch.no_grad():
                variant.fn(*args)

    device = problem.setting.device
    median = _median_ms(call, device, reps, warmup)
    tflops = problem.flops(backward) / (median * 1e-3) / 1e12
    return Measurement(variant.name, "fwd+bwd" if backward else "fwd", median,
                       _peak_mib(call, device), tflops, note=variant.note)


def device_label(device: str) -> str:
    """The device as tables name it: the CUDA card's name, or the CPU and its threads."""
    return (torch.cuda.get_device_name() if device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads")


def run(problem, *, reps: int = 5, modes=("fwd", "fwd+bwd"), peak: Peak | None = None,
        progress: Callable[[str], None] | None = None) -> Table:
    """Measure every variant in every mode; ratios are against the problem's baseline. An
    optional variant (a rival) that raises is listed in ``Table.skipped`` with the reason;
    any other failure propagates. With ``peak``, each row also gets its fraction of it."""
    baseline, variants, skipped = problem.variants()
    table = Table(problem.title, problem.setting, device_label(problem.setting.device),
                  baseline, skipped=list(skipped), peak=peak)
    for mode in modes:
        measured = []
        for variant in variants:
            if progress:
                progress(f"{mode:8s} {variant.name}")
            try:
                measured.append(measure(variant, problem, backward=mode == "fwd+bwd",
                                        reps=reps))
            except Exception as e:  # noqa: BLE001 -- only rivals may fail; ours must raise
                if not variant.optional:
                    raise
                table.skipped.append(Skipped(variant.name, mode, _reason(e)))
        base = next(m for m in measured if m.name == baseline)
        for m in measured:
            m.ratio = m.median_ms / base.median_ms
            if m.peak_mib is not None and base.peak_mib:
                m.mem_ratio = m.peak_mib / base.peak_mib
            if peak is not None and peak.tflops:
                m.peak_fraction = m.tflops / peak.tflops
        table.rows.extend(measured)
    return table


def problems(setting: Setting, seqlen: int = 4096) -> dict[str, object]:
    """The standard tables (see the module docstring)."""
    text_queries = (32, 40, 48, 56, 64, 36, 44, 60)
    combiner = tuple(560 + 40 * (i % 3) for i in range(16))  # 560, 600, 640, ...
    return {
        "chunked": ChunkedProblem(seqlen=seqlen, setting=setting),
        "cross-text": CrossProblem("text decoder", text_queries, (128,) * 8, setting),
        "cross-combiner": CrossProblem("Combiner, block-diagonal", combiner, combiner, setting),
    }


def format_table(table: Table) -> str:
    dtype = str(table.setting.dtype).removeprefix("torch.")
    head = (f"{table.title}, {dtype} on {table.device_name}\nratios against "
            f"{table.baseline!r}, measured side by side in this run (medians); TFLOP/s count "
            f"useful work only")
    if table.peak is not None:
        head += "; of peak: " + (f"TFLOP/s / {table.peak.note}" if table.peak.tflops
                                 else f"n/a, {table.peak.note}")
    with_peak = table.peak is not None
    cells = [("mode", "variant", "median ms", "x time", "peak MiB", "x memory", "TFLOP/s",
              *(("of peak",) if with_peak else ()), "note")]
    for m in table.rows:
        fraction = "n/a" if m.peak_fraction is None else f"{m.peak_fraction:.1%}"
        cells.append((m.mode, m.name, f"{m.median_ms:.2f}", f"{m.ratio:.2f}",
                      "n/a" if m.peak_mib is None else f"{m.peak_mib:.1f}",
                      "n/a" if m.mem_ratio is None else f"{m.mem_ratio:.2f}",
                      f"{m.tflops:.3f}", *((fraction,) if with_peak else ()), m.note))
    lines = [head, format_rows(cells)]
    lines += [f"skipped: {s.name} ({s.mode}): {s.reason}" for s in table.skipped]
    return "\n".join(lines)


def table_record(table: Table) -> dict:
    """The table as JSON-ready data (dtypes as strings)."""
    record = asdict(table)
    record["setting"]["dtype"] = str(table.setting.dtype)
    return record


# -------------------------------------------------------------------- model scaling


@dataclass
class ScalingRow:
    model: str
    mode: str                 # "fwd" or "fwd+bwd"
    frames: int
    chunks: int
    median_ms: float
    peak_mib: float | None
    ratio: float | None = None      # time / the same model and mode's time at fewer frames
    mem_ratio: float | None = None  # peak / the same model and mode's peak at fewer frames
    meets_target: bool | None = None  # Mirasol at more frames: both ratios <= target


@dataclass
class ScalingTable:
    title: str
    device_name: str
    frames: tuple[int, int]
    target: float
    params: dict[str, int]    # model -> parameter count
    config: dict
    rows: list[ScalingRow] = field(default_factory=list)


def _qa_inputs(config: MirasolConfig, frames: int, device: str) -> dict[str, Tensor | None]:
    """Batch-1 keyword arguments for either model's forward: random frames in [0, 1]
    (1, frames, C, H, W), random audio in [-1, 1] covering exactly their duration, and one
    short question-answer text with its answer mask."""
    gen = torch.Generator().manual_seed(frames)
    v, a = config.video, config.audio
    inputs = {"video": torch.rand(1, frames, v.channels, v.image_size, v.image_size,
                                  generator=gen), "audio": None}
    if a is not None:
        samples = chunk_layout(frames, config.frames_per_chunk, config.fps,
                               a.sample_rate).required_samples
        inputs["audio"] = torch.rand(1, samples, generator=gen) * 2 - 1
    tokenizer = ByteTokenizer()
    ids, mask = tokenizer.example("What is the dog doing?", "Catching a red ball.")
    inputs["text"], inputs["text_lengths"], inputs["answer_mask"] = tokenizer.pad([ids], [mask])
    return {name: t if t is None else t.to(device) for name, t in inputs.items()}


def _model_call(model: torch.nn.Module, batch: dict[str, Tensor], backward: bool) -> None:
    if backward:
        model(**batch).loss.backward()
        # In place: the gradient buffers persist (after the warm-up), so the peak counts
        # activations, not a parameter-sized constant that would flatten the ratios.
        model.zero_grad(set_to_none=False)
    else:
        with torch.no_grad():
            model(**batch)


def scaling(config: MirasolConfig | None = None, *, frames: tuple[int, int] = (128, 512),
            reps: int = 5, warmup: int = 1, device: str = "cpu", target: float = 4.5,
            progress: Callable[[str], None] | None = None) -> ScalingTable:
    """Mirasol (``config``, default the ``small`` preset) and the :class:`FlatBaseline` of
    the same config, each at ``frames`` = (fewer, more) frames (multiples of
    ``frames_per_chunk``), batch 1, float32, forward (no grad) and forward+backward of the
    loss (Mirasol's includes its latent loss). One model per kind serves both lengths.
    Ratios are the cost at more frames over the same model and mode's at fewer frames;
    Mirasol meets the target when both of its ratios at more frames are <= ``target``."""
    config = preset("small") if config is None else config
    torch.manual_seed(0)
    baseline = FlatBaseline(config).to(device)
    models = {"mirasol": Mirasol(config).to(device), "flat baseline": baseline}
    inputs = {f: _qa_inputs(config, f, device) for f in frames}
    chunks = [f // config.frames_per_chunk for f in frames]
    card = device_label(device)
    table = ScalingTable(
        f"scaling with clip length: {frames[0]} vs {frames[1]} frames ({chunks[0]} vs "
        f"{chunks[1]} chunks of {config.frames_per_chunk}, {baseline.tokens_per_chunk} A/V "
        f"tokens each), dim {config.dim}, batch 1, float32 on {card}",
        card, frames, target,
        {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        config.to_dict())
    for mode in ("fwd", "fwd+bwd"):
        for name, model in models.items():
            rows = []
            for f, t in zip(frames, chunks):
                if progress:
                    progress(f"{mode:8s} {name}, {f} frames")
                call = functools.partial(_model_call, model, inputs[f], mode == "fwd+bwd")
                rows.append(ScalingRow(name, mode, f, t, _median_ms(call, device, reps, warmup),
                                       _peak_mib(call, device)))
            model.zero_grad(set_to_none=True)
            few, many = rows
            for row in rows:
                row.ratio = row.median_ms / few.median_ms
                if row.peak_mib is not None and few.peak_mib:
                    row.mem_ratio = row.peak_mib / few.peak_mib
            if name == "mirasol":
                many.meets_target = many.ratio <= target and (many.mem_ratio is None
                                                              or many.mem_ratio <= target)
            table.rows.extend(rows)
    return table


def format_scaling(table: ScalingTable) -> str:
    few, many = table.frames
    params = ", ".join(f"{name} {n / 1e6:.1f}M parameters" for name, n in table.params.items())
    head = (f"{table.title}\n{params}; x = cost at {many} frames / the same model and mode at "
            f"{few} frames, measured side by side in this run (medians); target for mirasol: "
            f"<= {table.target:g}x time and memory")
    cells = [("mode", "model", "frames", "chunks", "median ms", "x time", "peak MiB",
              "x memory", "target")]
    for r in table.rows:
        cells.append((r.mode, r.model, str(r.frames), str(r.chunks), f"{r.median_ms:.1f}",
                      f"{r.ratio:.2f}", "n/a" if r.peak_mib is None else f"{r.peak_mib:.1f}",
                      "n/a" if r.mem_ratio is None else f"{r.mem_ratio:.2f}",
                      {None: "", True: "met", False: "MISSED"}[r.meets_target]))
    return head + "\n" + format_rows(cells)
