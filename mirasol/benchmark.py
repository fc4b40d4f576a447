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
* ``scaling`` (:func:`scaling`): the whole model, not one op. Forward and forward+backward
  time and peak memory of Mirasol's ``small`` preset at 128 and 512 frames (4 and 16
  chunks), against :class:`~mirasol.model.baseline.FlatBaseline` (one transformer over all
  frames' tokens). Target: 4x the frames costs Mirasol at most 4.5x the time and memory.

On CUDA the triton backend runs, and FlexAttention (compiled, same mask), flash-attn and
xformers join where installed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol._format import format_rows
from mirasol.data.tokenizer import ByteTokenizer
from mirasol.model import Mirasol, MirasolConfig, chunk_layout, preset
from mirasol.model.baseline import FlatBaseline
from mirasol.ops import chunked_causal_attention, cross_attention
from mirasol.reference import chunked_causal_mask, cross_attention_mask


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[..., Tensor]
    inputs: Callable[[bool], tuple[Tensor, ...]]  # requires_grad -> the fn's arguments
    note: str = ""


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
                f"chunk={self.chunk_size}")

    def inputs(self, requires_grad: bool) -> tuple[Tensor, ...]:
        s = self.setting
        return tuple(s.randn(self.batch, s.heads, self.seqlen, s.head_dim, seed=i,
                             requires_grad=requires_grad) for i in range(3))

    def visible_pairs(self) -> int:
        """(query, key) pairs the mask lets through, per head."""
        chunks, last = divmod(self.seqlen, self.chunk_size)
        full = sum(self.chunk_size * (t + 1) * self.chunk_size for t in range(chunks))
        return self.batch * (full + last * self.seqlen)

    def variants(self) -> tuple[str, list[Variant]]:
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
        ]
        if s.device != "cpu":
            size = self.chunk_size
            rows += _flex_variant(lambda b, h, i, j: j // size <= i // size, self.batch,
                                  self.seqlen, self.seqlen, self.inputs, s.device)
            rows += _flash_causal_variant(self.inputs)
        return "SDPA dense mask", rows


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
                f"{max(self.k_lens)}")

    def cu(self, lens) -> Tensor:
        return torch.tensor((0, *accumulate(lens)), dtype=torch.int32, device=self.setting.device)

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

    def visible_pairs(self) -> int:
        return sum(nq * nk for nq, nk in zip(self.q_lens, self.k_lens))

    def variants(self) -> tuple[str, list[Variant]]:
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
        if s.device != "cpu":
            rows += _cuda_varlen_variants(self, cu_q, cu_k, max_q, max_k)
        return "SDPA block-diagonal mask", rows


# --------------------------------------------------------------- optional CUDA rivals


def _flex_variant(mask_mod, batch, q_rows, k_rows, inputs, device) -> list[Variant]:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return []
    block_mask = create_block_mask(mask_mod, batch if batch > 1 else None, None, q_rows, k_rows,
                                   device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return [Variant("FlexAttention", lambda q, k, v: compiled(q, k, v, block_mask=block_mask),
                    inputs, "compiled, same block mask")]


def _flash_causal_variant(inputs) -> list[Variant]:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return []
    # flash-attn takes (B, N, H, D); token-causal does about as much work as chunk size 1.
    return [Variant("flash-attn causal",
                    lambda q, k, v: flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)),
                                                    causal=True).transpose(1, 2),
                    inputs, "token-causal, not chunked")]


def _cuda_varlen_variants(problem: CrossProblem, cu_q, cu_k, max_q, max_k) -> list[Variant]:
    rows = []
    seg_q = torch.repeat_interleave(torch.arange(len(problem.q_lens), device=cu_q.device),
                                    torch.tensor(problem.q_lens, device=cu_q.device))
    seg_k = torch.repeat_interleave(torch.arange(len(problem.k_lens), device=cu_k.device),
                                    torch.tensor(problem.k_lens, device=cu_k.device))

    def as_4d(inputs):
        return lambda requires_grad: tuple(t.detach().transpose(0, 1)[None].contiguous()
                                           .requires_grad_(requires_grad)
                                           for t in inputs(requires_grad))

    rows += _flex_variant(lambda b, h, i, j: seg_q[i] == seg_k[j], 1, sum(problem.q_lens),
                          sum(problem.k_lens), as_4d(problem.packed), problem.setting.device)
    try:
        from flash_attn import flash_attn_varlen_func

        rows.append(Variant("flash_attn_varlen_func",
                            lambda q, k, v: flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q,
                                                                   max_k),
                            problem.packed, "packed"))
    except ImportError:
        pass
    try:
        from xformers.ops import memory_efficient_attention
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

        bias = BlockDiagonalMask.from_seqlens(list(problem.q_lens), list(problem.k_lens))
        rows.append(Variant("xformers BlockDiagonalMask",
                            lambda q, k, v: memory_efficient_attention(
                                q[None], k[None], v[None], attn_bias=bias)[0],
                            problem.packed, "packed"))
    except ImportError:
        pass
    return rows


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


@dataclass
class Table:
    title: str
    setting: Setting
    device_name: str
    baseline: str
    rows: list[Measurement] = field(default_factory=list)


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
    per_pair = 4 * problem.setting.head_dim * (3.5 if backward else 1)  # FlashAttention's count
    tflops = problem.visible_pairs() * problem.setting.heads * per_pair / (median * 1e-3) / 1e12
    return Measurement(variant.name, "fwd+bwd" if backward else "fwd", median,
                       _peak_mib(call, device), tflops, note=variant.note)


def run(problem, *, reps: int = 5, modes=("fwd", "fwd+bwd"),
        progress: Callable[[str], None] | None = None) -> Table:
    """Measure every variant in every mode; ratios are against the problem's baseline."""
    baseline, variants = problem.variants()
    device = problem.setting.device
    device_name = (torch.cuda.get_device_name() if device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} threads")
    table = Table(problem.title, problem.setting, device_name, baseline)
    for mode in modes:
        measured = []
        for variant in variants:
            if progress:
                progress(f"{mode:8s} {variant.name}")
            measured.append(measure(variant, problem, backward=mode == "fwd+bwd", reps=reps))
        base = next(m for m in measured if m.name == baseline)
        for m in measured:
            m.ratio = m.median_ms / base.median_ms
            if m.peak_mib is not None and base.peak_mib:
                m.mem_ratio = m.peak_mib / base.peak_mib
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
    s = table.setting
    head = (f"{table.title}, H={s.heads} d={s.head_dim} {str(s.dtype).removeprefix('torch.')} "
            f"on {table.device_name}\nratios against {table.baseline!r}, measured side by side "
            f"in this run (medians); TFLOP/s count visible pairs only")
    cells = [("mode", "variant", "median ms", "x time", "peak MiB", "x memory", "TFLOP/s",
              "note")]
    for m in table.rows:
        cells.append((m.mode, m.name, f"{m.median_ms:.2f}", f"{m.ratio:.2f}",
                      "n/a" if m.peak_mib is None else f"{m.peak_mib:.1f}",
                      "n/a" if m.mem_ratio is None else f"{m.mem_ratio:.2f}",
                      f"{m.tflops:.3f}", m.note))
    return head + "\n" + format_rows(cells)


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
    device_name = (torch.cuda.get_device_name() if device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} threads")
    table = ScalingTable(
        f"scaling with clip length: {frames[0]} vs {frames[1]} frames ({chunks[0]} vs "
        f"{chunks[1]} chunks of {config.frames_per_chunk}, {baseline.tokens_per_chunk} A/V "
        f"tokens each), dim {config.dim}, batch 1, float32 on {device_name}",
        device_name, frames, target,
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
