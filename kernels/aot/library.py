"""The kernel variants of the ahead-of-time C library and their compiles (``c_sources``
writes the library's sources from them).

The forward kernels an inference engine needs, each compiled with triton (no GPU needed)
for every requested arch, dtype and head dim, and for each layout the C API offers:

* ``attn_fwd``: chunked causal attention on a padded batch, with or without per-sample
  lengths; cross-attention on packed segments (``cu_seqlens``), plain or bottom-right
  causal;
* ``token_pool_fwd``: token pooling of padded segments (with or without lengths) or
  packed ones, per bucket of output tokens (the tuning table's: 16, 32, 64).

The argument contract. A kernel is compiled for arguments of unknown value, except what
the C API guarantees: tensors are contiguous (innermost strides are 1, compiled in as
constants), pointers are 16-byte aligned and the strides that are multiples of the head
dim (or of the feature dim, which the C API requires to be a multiple of 16) are multiples
of 16 (compiled in as divisibility hints), and the head dim is the variant's. Each
variant's table records these assumptions and the C side checks them before a launch, so
a violated assumption is an error, never a wrong answer. The specialization is read off
two launches built on meta tensors with unrelated odd sizes; the two must agree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .compiler import compile_source, specialize
from .problems import AttentionProblem, TokenPoolProblem
from .registry import OPS

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The C API's layouts of each kernel, in the order of the generated enum (problems.py).
LAYOUTS = {
    "attn_fwd": ("chunked", "chunked_lengths", "cross", "cross_causal"),
    "token_pool_fwd": ("padded", "padded_lengths", "packed"),
}
TOKEN_BUCKETS = OPS["token_pool"].buckets
SYMBOLS = {"attn_fwd": "_attn_fwd_kernel", "token_pool_fwd": "_token_pool_fwd_kernel"}
MAX_PARAMS = 64  # the most kernel parameters the C library passes (MIRASOL_MAX_PARAMS)
# Two unrelated problems per variant: (segments, heads, kv heads, rows, chunk) for
# attention, (segments, tokens, feature dim, output tokens below the bucket) for pooling.
# Odd where the C API allows any value, so nothing incidental is specialized.
ATTENTION_PROBES = ((3, 6, 3, 1001, 77), (5, 10, 5, 333, 45))
POOL_PROBES = ((3, 1001, 208, 1), (5, 333, 336, 3))


@dataclass(frozen=True)
class Variant:
    kernel: str   # "attn_fwd" | "token_pool_fwd"
    arch: int     # sm_<arch>
    dtype: str    # "fp16" | "bf16"
    size: int     # head dim (attention) or output-token bucket (pooling)
    layout: str   # one of LAYOUTS[kernel]

    @property
    def name(self) -> str:
        return f"{self.kernel}_sm{self.arch}_{self.dtype}_{self.size}_{self.layout}"


def variants(archs, dtypes, head_dims) -> list[Variant]:
    out = []
    for arch, dtype in itertools.product(archs, dtypes):
        out += [Variant("attn_fwd", arch, dtype, d, layout)
                for d, layout in itertools.product(head_dims, LAYOUTS["attn_fwd"])]
        out += [Variant("token_pool_fwd", arch, dtype, m, layout)
                for m, layout in itertools.product(TOKEN_BUCKETS, LAYOUTS["token_pool_fwd"])]
    return out


def _probe_launch(v: Variant, probe: int):
    """The variant's launch on meta tensors of probe problem ``probe`` (0 or 1)."""
    if v.kernel == "attn_fwd":
        B, H, H_kv, N, chunk = ATTENTION_PROBES[probe]
        rows = N if v.layout.startswith("chunked") else B * N
        problem = AttentionProblem(v.layout, B, H, H_kv, v.size, rows, max_q=N, max_k=N,
                                   chunk=chunk)
    else:
        B, N, D, below = POOL_PROBES[probe]
        rows = B * N if v.layout == "packed" else N
        problem = TokenPoolProblem(v.layout, B, rows, D, v.size - below, max_rows=N)
    return problem.launches(DTYPES[v.dtype], divmod(v.arch, 10))[v.kernel]


@dataclass(frozen=True)
class Arg:
    name: str
    ctype: str    # "ptr" | "i32" | "fp32"
    rule: str     # "any" | "div16" (value or address % 16 == 0) | "equals" (compiled in)
    value: int = 0


@dataclass(frozen=True)
class Compiled:
    variant: Variant
    args: tuple[Arg, ...]   # the kernel's runtime parameters, in order
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    shared: int
    cubin: bytes


def _specialization(v: Variant, launch):
    """(signature, constexprs, attrs, options, args) of the variant: triton's own
    specialization of the probe launch, with the head dim compiled in."""
    signature, constexprs, attrs, options = specialize(launch, v.arch)
    fn = launch.kernel
    args = []
    values = iter(launch.args)  # the runtime parameters' values, in order
    for i, param in enumerate(fn.params):
        if param.is_constexpr:
            continue
        value = next(values)
        ctype = ("ptr" if isinstance(value, torch.Tensor) else
                 "fp32" if isinstance(value, float) else "i32")
        if param.name == "HEAD_DIM":  # the variant's: compiled in, masks fold away
            constexprs[(i,)], signature[param.name] = v.size, "constexpr"
            attrs.pop((i,), None)
            args.append(Arg(param.name, ctype, "equals", v.size))
        elif (i,) in constexprs:  # equal to 1: innermost strides, causal CHUNK
            args.append(Arg(param.name, ctype, "equals", constexprs[(i,)]))
        elif ["tt.divisibility", 16] in attrs.get((i,), []):
            args.append(Arg(param.name, ctype, "div16"))
        else:
            args.append(Arg(param.name, ctype, "any"))
    return signature, constexprs, attrs, options, tuple(args)


def compile_variant(v: Variant) -> Compiled:
    launches = [_probe_launch(v, p) for p in (0, 1)]
    specs = [_specialization(v, launch) for launch in launches]
    if specs[0][-1] != specs[1][-1]:
        raise RuntimeError(f"{v.name}: the probe problems specialize differently "
                           f"({specs[0][-1]} vs {specs[1][-1]}); choose other probes")
    signature, constexprs, attrs, options, args = specs[0]
    launch = launches[0]
    compiled = compile_source(launch, v.arch, signature, constexprs, attrs, options)
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size or meta.launch_cooperative_grid \
            or meta.num_ctas != 1 or meta.launch_pdl or meta.tensordesc_meta:
        raise RuntimeError(f"{v.name}: needs a launch feature the C library does not "
                           "implement (scratch memory, cooperative grid, clusters, PDL or "
                           "TMA descriptors)")
    passed = sum(a.rule != "equals" for a in args) + 2  # + triton's two scratch pointers
    if passed > MAX_PARAMS:
        raise RuntimeError(f"{v.name}: {passed} kernel parameters; the C library passes at "
                           f"most {MAX_PARAMS} (MIRASOL_MAX_PARAMS)")
    cfg = launch.config
    return Compiled(v, args, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
                    meta.shared, compiled.asm["cubin"])
