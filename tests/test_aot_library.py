"""The CMake ahead-of-time C library (CMakeLists.txt, aot/): configured, built and tested
with ctest, as docs/c-library.md says, for two archs; and the C side's launches are the Python
launchers' launches.

No GPU here: ctest's ``run`` test (every op on the GPU against the C reference) must
report itself skipped; ``api`` (argument checks, arch selection) and ``launch`` (the launch
path against a stand-in libcuda.so.1) must pass. The
comparison with the Python launchers is what stands in for the GPU on this machine: for
each layout, the variant's tile config, the grid and every kernel argument (strides, the
scale in base 2, which tensor each pointer is) equal those ``kernels/`` builds for the
same problem, so the cubin receives what the JIT-compiled kernel would.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mirasol.kernels.aot.cubin import param_sizes
from mirasol.kernels.aot.problems import AttentionProblem, TokenPoolProblem, meta
from mirasol.testing import tolerances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (80, 90)
HEAD_DIM = 64

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                reason="needs cmake and a C compiler")


def _run(*cmd, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    build = tmp_path_factory.mktemp("cmake-build")
    _run("cmake", "-S", ROOT, "-B", str(build), f"-DMIRASOL_PYTHON={sys.executable}",
         f"-DMIRASOL_CUDA_ARCHITECTURES={';'.join(map(str, ARCHS))}",
         "-DMIRASOL_AOT_DTYPES=bf16", f"-DMIRASOL_AOT_HEAD_DIMS={HEAD_DIM}")
    _run("cmake", "--build", str(build), "-j", "2")
    return build


def test_ctest(build):
    out = _run("ctest", "--test-dir", str(build), "--output-on-failure")
    for test in ("api", "launch"):  # no GPU needed
        assert f"{test} ...." in out and "Passed" in out.split(f"{test} ....")[1].splitlines()[0]
    run_line = out.split("run ....")[1].splitlines()[0]
    if torch.cuda.is_available():
        assert "Passed" in run_line, out
    else:
        assert "Skipped" in run_line, out
    assert (build / "libmirasol_kernels.so").exists()


def test_generated_constants_are_the_python_ones(build):
    """The C side's constants come from the generated header, whose values are the Python
    side's: the op's token limit is the C library's (the kernels' last bucket)."""
    import re

    from mirasol.kernels.aot.archs import SHARED_WITHOUT_OPTIN
    from mirasol.kernels.aot.library import MAX_PARAMS, TOKEN_BUCKETS
    from mirasol.kernels.attention import LOG2E, NO_CHUNKS
    from mirasol.ops.token_pool import MAX_OUTPUT_TOKENS

    header = (build / "generated" / "mirasol_kernels.h").read_text()
    defines = dict(re.findall(r"^#define MIRASOL_(\w+) (.+)$", header, re.MULTILINE))
    assert defines == {
        "NO_CHUNKS": str(NO_CHUNKS), "LOG2E": repr(LOG2E.value),
        "TOKEN_BUCKETS": "{" + ", ".join(map(str, TOKEN_BUCKETS)) + "}",
        "MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
        "SHARED_WITHOUT_OPTIN": str(SHARED_WITHOUT_OPTIN), "MAX_PARAMS": str(MAX_PARAMS)}


# (C arguments after "plan_dump ARCH bf16", the Python launch of the same problem)
def _chunked(lengths):
    B, H, H_kv, N, C = 2, 8, 2, 1000, 256
    problem = AttentionProblem("chunked_lengths" if lengths else "chunked", B, H, H_kv,
                               HEAD_DIM, N, chunk=C)

    def launch(tensor, capability):
        return problem.launches(torch.bfloat16, capability, scale=1 / HEAD_DIM,
                                tensor=tensor)["attn_fwd"]

    return ["chunked", B, H, H_kv, N, HEAD_DIM, C] + (["lengths"] if lengths else []), launch


def _cross(causal):
    S, TQ, TK, MQ, MK, H, H_kv = 3, 70, 90, 40, 50, 4, 2
    problem = AttentionProblem("cross_causal" if causal else "cross", S, H, H_kv, HEAD_DIM,
                               TQ, TK, max_q=MQ, max_k=MK)

    def launch(tensor, capability):
        return problem.launches(torch.bfloat16, capability, scale=1 / HEAD_DIM,
                                tensor=tensor)["attn_fwd"]

    return ["cross", S, TQ, TK, MQ, MK, H, H_kv, HEAD_DIM, int(causal)], launch


def _pool(layout, tokens):
    S, N, D = 5, 37, 96
    problem = TokenPoolProblem({"lengths": "padded_lengths"}.get(layout, layout), S, N, D,
                               tokens)

    def launch(tensor, capability):
        return problem.launches(torch.bfloat16, capability, tensor=tensor)["token_pool_fwd"]

    return ["pool", S, N, D, tokens, layout], launch


PROBLEMS = {
    "chunked": _chunked(False), "chunked-lengths": _chunked(True),
    "cross": _cross(False), "cross-causal": _cross(True),
    "pool-padded": _pool("padded", 8), "pool-lengths": _pool("lengths", 20),
    "pool-packed": _pool("packed", 64),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_launch_matches_python(build, problem, arch):
    c_args, python_launch = PROBLEMS[problem]
    plan = json.loads(_run(str(build / "plan_dump"), str(arch), "bf16", *map(str, c_args)))

    roles = {}

    def tagged(role, *shape, dtype):  # a meta tensor, named as the C API names it
        t = meta(role, *shape, dtype=dtype)
        roles[id(t)] = role
        return t

    def role(t):  # a view (made here or by the launcher) is its base tensor's
        return roles[id(t if t._base is None else t._base)]

    launch = python_launch(tagged, divmod(arch, 10))
    cfg = launch.config
    assert plan["config"] == [cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages]
    assert plan["grid"] == [*launch.grid, 1, 1][:3]  # the flat grid, padded to 3-D
    # The parameters the C launch passes have the sizes, in order, the cubin declares.
    assert plan["param_sizes"] == param_sizes(str(build / "generated" / "cubin" /
                                                  plan["cubin"]))
    names = [n for n in launch.kernel.arg_names if n not in launch.constexprs]
    assert list(plan["args"]) == names
    for name, value in zip(names, launch.args):
        got = plan["args"][name]
        if isinstance(value, torch.Tensor):
            assert plan["tensors"][str(got)] == role(value), name
        elif isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-6), (name, got, value)
        else:
            assert got == value, (name, got, value)


# ------------------------------------------- the C reference that `run` checks the GPU by


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import ctypes

    lib = tmp_path_factory.mktemp("c-reference") / "libreference.so"
    _run("cc", "-O1", "-shared", "-fPIC", "-o", str(lib),
         os.path.join(ROOT, "aot/tests/reference.c"), "-I", os.path.join(ROOT, "aot/include"),
         "-lm")
    ref = ctypes.CDLL(str(lib))
    ref.ref_to_bits.restype, ref.ref_to_bits.argtypes = ctypes.c_uint16, [ctypes.c_float,
                                                                           ctypes.c_int]
    ref.ref_from_bits.restype, ref.ref_from_bits.argtypes = ctypes.c_float, [ctypes.c_uint16,
                                                                              ctypes.c_int]
    return ref


def _ptr(t: torch.Tensor):
    import ctypes

    return ctypes.c_void_p(t.data_ptr())


@pytest.mark.parametrize("dtype,code", [(torch.float16, 0), (torch.bfloat16, 1)])
def test_c_reference_rounds_like_torch(reference, dtype, code):
    gen = torch.Generator().manual_seed(code)
    x = torch.cat([torch.randn(2000, generator=gen) * 10.0 ** torch.randint(-9, 6, (2000,),
                                                                         generator=gen),
                   torch.tensor([0.0, -0.0, 65504.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25,
                                 3 * 2.0**-26, float("inf")])])
    bits = [reference.ref_to_bits(float(v), code) for v in x.tolist()]
    expected = x.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    assert bits == expected.tolist()
    back = torch.tensor([reference.ref_from_bits(b, code) for b in bits])
    assert torch.equal(back, x.to(dtype).float())


def _assert_float64_exact(got: torch.Tensor, oracle: torch.Tensor):
    """Two float64 computations of the same sum: within the table's float64 floor."""
    allowed = tolerances.floor(torch.float64, tolerances.magnitude(oracle))
    assert (got - oracle).abs().max().item() <= allowed


def test_c_reference_attention_row(reference):
    import ctypes

    from mirasol.reference import masked_attention

    gen = torch.Generator().manual_seed(0)
    n, d = 50, 32
    q, k, v = (torch.randn(s, generator=gen) for s in ((d,), (n, d), (n, d)))
    visible = torch.rand(n, generator=gen) < 0.6
    out, lse = torch.zeros(d, dtype=torch.float64), ctypes.c_double()
    vis = visible.to(torch.uint8)

    def c_row(dtype_code):
        reference.ref_attention_row(_ptr(q), _ptr(k), _ptr(v), d, _ptr(vis), n, d,
                                    ctypes.c_double(0.3), dtype_code, _ptr(out),
                                    ctypes.byref(lse))
        return out.clone(), lse.value

    def python_row(dtype):
        return masked_attention(*(t.to(dtype)[None, None] for t in (q[None], k, v)),
                                visible[None, None, None], 0.3).flatten().double()

    oracle = python_row(torch.float64)
    got, got_lse = c_row(-1)
    _assert_float64_exact(got, oracle)
    scores = (k.double() @ q.double() * 0.3)[visible]
    _assert_float64_exact(torch.tensor([got_lse], dtype=torch.float64),
                          torch.logsumexp(scores, 0)[None])
    # The C emulation of the reference in bf16 errs like the Python reference in bf16 (the
    # parity rule's bound, which `run` divides the kernel's error by).
    got_bf16, _ = c_row(1)
    c_err = (got_bf16 - oracle).abs().max().item()
    torch_err = (python_row(torch.bfloat16) - oracle).abs().max().item()
    assert 0 < c_err <= (tolerances.factor(False) * torch_err
                         + tolerances.floor(torch.bfloat16, tolerances.magnitude(oracle)))


def test_c_reference_token_pool(reference):
    from mirasol.reference import token_pool

    gen = torch.Generator().manual_seed(1)
    n, d, m = 30, 16, 5
    x, logits = torch.randn(n, d, generator=gen), torch.randn(n, m, generator=gen) * 3
    out = torch.zeros(m, d, dtype=torch.float64)
    reference.ref_token_pool_segment(_ptr(x), _ptr(logits), n, d, m, -1, _ptr(out))
    expected = token_pool(x.double(), logits.double(),
                          cu_seqlens=torch.tensor([0, n], dtype=torch.int32))
    _assert_float64_exact(out, expected[0])
