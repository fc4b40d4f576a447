"""Cross-compile a launch for a CUDA target without a GPU.

``triton.compile`` with a ``GPUTarget`` yields PTX and a cubin for any sm_XX on a machine
with no driver. Must run in a process where ``TRITON_INTERPRET`` is unset (under the
interpreter ``@triton.jit`` yields functions that cannot be compiled).
"""

from __future__ import annotations

import hashlib

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import (get_cache_invalidating_env_vars, get_cache_key,
                                      make_backend)
from triton.runtime.jit import create_function_from_signature

from .._launch import Launch
from . import cache


def target(arch: int) -> GPUTarget:
    return GPUTarget("cuda", arch, 32)


def specialize(launch: Launch, arch: int):
    """``(signature, constexprs, attrs, options)`` of ``launch`` for ``sm_<arch>``, as
    triton's JIT would specialize a real launch with these argument values: integers equal
    to 1 become constants, pointers and integers divisible by 16 get the divisibility hint
    that enables vectorized loads."""
    fn = launch.kernel
    backend = make_backend(target(arch))
    kwargs = dict(launch.constexprs, num_warps=launch.config.num_warps,
                  num_stages=launch.config.num_stages)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args,
                                                          specialization, options)
    return signature, constexprs, attrs, options


def source(launch: Launch, signature, constexprs, attrs) -> ASTSource:
    return ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def cache_key(src: ASTSource, arch: int, options) -> str:
    """The key triton.compile files this compile under (so it is the same compile exactly
    when the key is the same)."""
    backend = make_backend(target(arch))
    parsed = backend.parse_options(dict(options.__dict__, **src.parse_options()))
    key = get_cache_key(src, backend, parsed, env_vars=get_cache_invalidating_env_vars())
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def compile_source(launch: Launch, arch: int, signature, constexprs, attrs, options):
    """Compile ``launch``'s kernel with this specialization for ``sm_<arch>``; returns
    triton's compiled kernel (``.asm['cubin']``, ``.asm['ptx']``, ``.metadata``). One
    process at a time compiles a given key; the others get triton's cached result."""
    src = source(launch, signature, constexprs, attrs)
    with cache.exclusive(cache_key(src, arch, options)):
        return triton.compile(src, target=target(arch), options=options.__dict__)


def compile_launch(launch: Launch, arch: int):
    """Compile ``launch`` (built from meta tensors) for ``sm_<arch>``, specialized as a real
    launch with its argument values would be, so the code is what the GPU would run."""
    return compile_source(launch, arch, *specialize(launch, arch))
