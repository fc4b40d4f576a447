"""Generate the sources of the ahead-of-time C library (``CMakeLists.txt`` runs this).

The forward kernels an inference engine needs, each compiled with triton (no GPU needed,
see ``aot``) for every requested arch, dtype and head dim, and for each layout the C API
offers:

* ``attn_fwd``: chunked causal attention on a padded batch, with or without per-sample
  lengths; cross-attention on packed segments (``cu_seqlens``), plain or bottom-right
  causal;
* ``token_pool_fwd``: token pooling of padded segments (with or without lengths) or
  packed ones, per bucket of output tokens (16, 32, 64).

Outputs, in ``--out``:

* ``mirasol_kernels.h``: one argument struct per kernel, its fields the kernel's runtime
  parameters in order (the C side fills every field; a kernel change that renames or
  adds a parameter breaks the C build instead of launching with wrong arguments);
* ``mirasol_kernels.c``: the table of compiled variants: for each, its config, grid
  blocks, shared memory, and the contract of every argument;
* ``mirasol_images.S`` and ``cubin/*.cubin``: the cubins, linked in by ``.incbin``.

The argument contract. A kernel is compiled for arguments of unknown value, except what
the C API guarantees: tensors are contiguous (innermost strides are 1, compiled in as
constants), pointers are 16-byte aligned and the strides that are multiples of the head
dim (or of the feature dim, which the C API requires to be a multiple of 16) are multiples
of 16 (compiled in as divisibility hints), and the head dim is the variant's. Each
variant's table records these assumptions and the C side checks them before a launch, so
a violated assumption is an error, never a wrong answer. The specialization is read off
two launches built on meta tensors with unrelated odd sizes; the two must agree.

    python -m mirasol.kernels.aot_library --archs 80 90 --dtypes fp16 bf16 \\
        --head-dims 64 128 --out build/generated
"""

from __future__ import annotations

import argparse
import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The C API's layouts of each kernel, in the order of the generated enum.
LAYOUTS = {
    "attn_fwd": ("chunked", "chunked_lengths", "cross", "cross_causal"),
    "token_pool_fwd": ("padded", "padded_lengths", "packed"),
}
TOKEN_BUCKETS = (16, 32, 64)
SYMBOLS = {"attn_fwd": "_attn_fwd_kernel", "token_pool_fwd": "_token_pool_fwd_kernel"}
MAX_PARAMS = 64  # MIRASOL_MAX_PARAMS in aot/src/variant.h
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


def _meta(*shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def _probe_launch(v: Variant, probe: int):
    """The variant's launch on meta tensors of probe problem ``probe`` (0 or 1)."""
    capability = (v.arch // 10, v.arch % 10)
    dtype = DTYPES[v.dtype]
    if v.kernel == "attn_fwd":
        from .attention import NO_CHUNKS, Segments, attn_fwd_launch

        B, H, H_kv, N, chunk = ATTENTION_PROBES[probe]
        D = v.size
        if v.layout.startswith("chunked"):
            lengths = _meta(B, dtype=torch.int32) if v.layout == "chunked_lengths" else None
            seg = Segments(max_q=N, max_k=N, chunk=chunk, q_lens=lengths, k_lens=lengths)
            q, o = _meta(B, H, N, D, dtype=dtype), _meta(B, H, N, D, dtype=dtype)
            k, v_ = _meta(B, H_kv, N, D, dtype=dtype), _meta(B, H_kv, N, D, dtype=dtype)
            lse = _meta(B, H, N, dtype=torch.float32)
        else:
            causal = v.layout == "cross_causal"
            cu = _meta(B + 1, dtype=torch.int32)
            seg = Segments(max_q=N, max_k=N, chunk=1 if causal else NO_CHUNKS, causal=causal,
                           cu_q=cu, cu_k=cu)
            total = B * N  # packed (total, H, D) tensors, seen as (1, H, total, D)
            q, o = (_meta(total, H, D, dtype=dtype).transpose(0, 1)[None] for _ in range(2))
            k, v_ = (_meta(total, H_kv, D, dtype=dtype).transpose(0, 1)[None]
                     for _ in range(2))
            lse = _meta(1, H, total, dtype=torch.float32)
        return attn_fwd_launch(q, k, v_, o, lse, seg, D ** -0.5, capability=capability)
    from .token_pool import token_pool_fwd_launch

    B, N, D, below = POOL_PROBES[probe]
    M = v.size - below
    if v.layout == "packed":
        x, logits = _meta(B * N, D, dtype=dtype), _meta(B * N, M, dtype=dtype)
        cu, lengths = _meta(B + 1, dtype=torch.int32), None
    else:
        x, logits = _meta(B, N, D, dtype=dtype), _meta(B, N, M, dtype=dtype)
        cu = None
        lengths = _meta(B, dtype=torch.int32) if v.layout == "padded_lengths" else None
    out, stats = _meta(B, M, D, dtype=dtype), _meta(B, 2, M, dtype=torch.float32)
    return token_pool_fwd_launch(x, logits, out, stats, cu, lengths, capability=capability)


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
    from .aot import specialize

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
    from .aot import compile_source

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
                           f"most {MAX_PARAMS} (MIRASOL_MAX_PARAMS in aot/src/variant.h)")
    cfg = launch.config
    return Compiled(v, args, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
                    meta.shared, compiled.asm["cubin"])


# ------------------------------------------------------------------------ C sources

_CTYPES = {"ptr": "uint64_t", "i32": "int32_t", "fp32": "float"}
_ENUM = {kernel: [f"MIRASOL_{kernel.upper()}_{layout.upper()}" for layout in layouts]
         for kernel, layouts in LAYOUTS.items()}


def _header(compiled: list[Compiled]) -> str:
    lines = ["/* Generated by mirasol.kernels.aot_library: do not edit. */",
             "#ifndef MIRASOL_KERNELS_H", "#define MIRASOL_KERNELS_H", "",
             "#include <stdint.h>", ""]
    for kernel in LAYOUTS:
        args = next(c.args for c in compiled if c.variant.kernel == kernel)
        lines.append(f"/* The runtime parameters of {SYMBOLS[kernel]}, in order. */")
        lines.append("typedef struct {")
        lines += [f"  {_CTYPES[a.ctype]} {a.name};" for a in args]
        lines += [f"}} mirasol_{kernel}_args;", ""]
        lines.append("enum { " + ", ".join(f"{e} = {i}" for i, e in enumerate(_ENUM[kernel]))
                     + " };")
        lines.append("")
    lines += ["#endif", ""]
    return "\n".join(lines)


def _source(compiled: list[Compiled]) -> str:
    lines = ["/* Generated by mirasol.kernels.aot_library: do not edit. */",
             '#include <stddef.h>', '#include "mirasol_kernels.h"', '#include "variant.h"', ""]
    lines += [f"extern const unsigned char mirasol_image_{i}[];" for i in range(len(compiled))]
    lines.append("")
    for i, c in enumerate(compiled):
        kernel = c.variant.kernel
        lines.append(f"static const mirasol_arg args_{i}[] = {{")
        for a in c.args:
            lines.append(f'  {{"{a.name}", offsetof(mirasol_{kernel}_args, {a.name}), '
                         f"MIRASOL_ARG_{a.ctype.upper()}, MIRASOL_RULE_{a.rule.upper()}, "
                         f"{a.value}}},")
        lines.append("};")
    lines += ["", "const mirasol_variant mirasol_variants[] = {"]
    for i, c in enumerate(compiled):
        v = c.variant
        layout = _ENUM[v.kernel][LAYOUTS[v.kernel].index(v.layout)]
        lines.append(
            f'  {{{{"{v.name}", {v.arch}, MIRASOL_{v.dtype.upper()}, {v.size}, {c.block_m}, '
            f"{c.block_n}, {c.num_warps}, {c.num_stages}, {c.shared}}}, "
            f'MIRASOL_KERNEL_{v.kernel.upper()}, {layout}, "{SYMBOLS[v.kernel]}", '
            f"mirasol_image_{i}, {len(c.cubin)}, args_{i}, {len(c.args)}}},")
    lines += ["};", f"const int mirasol_num_variants = {len(compiled)};", ""]
    return "\n".join(lines)


def _images(compiled: list[Compiled], cubin_dir: Path) -> str:
    lines = ["/* Generated by mirasol.kernels.aot_library: do not edit. */",
             '  .section .rodata']
    for i, c in enumerate(compiled):
        path = cubin_dir / f"{c.variant.name}.cubin"
        path.write_bytes(c.cubin)
        lines += [f"  .globl mirasol_image_{i}", f"  .hidden mirasol_image_{i}",
                  "  .balign 16", f"mirasol_image_{i}:", f'  .incbin "{path}"']
    # No executable stack: the object holds data only.
    lines += ['  .section .note.GNU-stack,"",@progbits', ""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate(out: Path, archs, dtypes, head_dims, jobs: int | None = None) -> list[Compiled]:
    """Compile every variant and write the C sources to ``out``."""
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"dtypes must be among {list(DTYPES)}, got {unknown}")
    bad = [d for d in head_dims if d % 16 or not 16 <= d <= 256]
    if bad:
        raise ValueError(f"head dims must be multiples of 16 in [16, 256], got {bad}")
    todo = variants(archs, dtypes, head_dims)
    with ProcessPoolExecutor(jobs or os.cpu_count()) as pool:
        compiled = list(pool.map(compile_variant, todo))
    cubin_dir = (out / "cubin").resolve()
    cubin_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out / "mirasol_kernels.h", _header(compiled))
    _write_if_changed(out / "mirasol_kernels.c", _source(compiled))
    _write_if_changed(out / "mirasol_images.S", _images(compiled, cubin_dir))
    return compiled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, nargs="+", required=True,
                        help="compute capabilities as integers: 80 86 89 90 100")
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=None, help="compile processes")
    args = parser.parse_args(argv)
    # Cross-compiling needs real @triton.jit functions (not the interpreter's); line
    # tables would quadruple the cubins and nothing reads them.
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    os.environ.setdefault("TRITON_DISABLE_LINE_INFO", "1")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    compiled = generate(args.out, args.archs, args.dtypes, args.head_dims, args.jobs)
    print(f"mirasol: {len(compiled)} kernel variants for sm_{', sm_'.join(map(str, args.archs))}"
          f" ({sum(len(c.cubin) for c in compiled) / 2**20:.1f} MiB of cubins) in {args.out}")


if __name__ == "__main__":
    main()
