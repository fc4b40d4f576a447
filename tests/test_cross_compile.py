"""The kernels compile for real GPUs, without one: every launch of an attention or token
pooling forward + backward, in each specialization the ops use (chunked with lengths,
packed cross-attention, packed causal; padded and packed pooling), with the configs each
generation selects, cross-compiles for sm_80 (A100) and sm_90 (H100) with no register
spills, within shared memory, and uses tensor-core instructions for 16-bit inputs. A
kernel that only works in the interpreter fails here.

Runs in a subprocess: compiling needs TRITON_INTERPRET unset, and these tests run with it
set (conftest.py)."""

import json
import os
import subprocess
import sys

import pytest

SHARED_LIMIT = {80: 166912, 90: 232448}  # bytes per block, opt-in maximum

SCRIPT = r"""
import itertools, json, sys, torch
from mirasol.kernels import aot
arch = int(sys.argv[1])
capability = (arch // 10, arch % 10)
records = []

def record(launches, variant, dtype, size, skip=()):
    for name, launch in launches.items():
        if name in skip:
            continue
        r = aot.resources(launch, arch)
        records.append(dict(kernel=name, variant=variant, dtype=str(dtype), size=size,
                            config=launch.config.__dict__, registers=r.registers,
                            shared=r.shared_bytes, stack=r.stack_bytes, local=r.local_bytes,
                            tensor_core_ops=r.tensor_core_ops))

# Attention: every dtype and head-dim bucket (80: a non-power of two) for the chunked
# specialization; the packed ones (other constexprs, same tiles) at both ends of the table.
for dtype, head_dim in itertools.product((torch.float16, torch.bfloat16, torch.float32),
                                         (64, 80, 256)):
    record(aot.attention_launches(capability, dtype, head_dim, "chunked"), "chunked", dtype,
           head_dim)
for variant, dtype, head_dim in itertools.product(aot.VARIANTS[1:],
                                                  (torch.bfloat16, torch.float32), (64, 256)):
    record(aot.attention_launches(capability, dtype, head_dim, variant), variant, dtype,
           head_dim, skip=("attn_bwd_delta",))  # the same launch in every variant
# Token pooling: both layouts, 16 and 64 output tokens (the table's ends).
for variant, dtype, tokens in itertools.product(aot.TOKEN_POOL_VARIANTS,
                                                (torch.bfloat16, torch.float32), (16, 64)):
    record(aot.token_pool_launches(capability, dtype, tokens, variant), variant, dtype, tokens)
print(json.dumps(records))
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_cross_compile(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(arch)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = json.loads(proc.stdout)
    assert len(records) == 9 * 4 + 2 * 4 * 3 + 2 * 2 * 2 * 2
    for r in records:
        where = (f"sm_{arch} {r['kernel']} ({r['variant']}) {r['dtype']} size={r['size']} "
                 f"{r['config']}")
        assert r["stack"] == 0 and r["local"] == 0, f"{where}: spills ({r})"
        assert r["shared"] <= SHARED_LIMIT[arch], f"{where}: {r['shared']} B shared memory"
        if r["kernel"] != "attn_bwd_delta" and r["dtype"] != "torch.float32":
            assert r["tensor_core_ops"] > 0, f"{where}: no tensor-core instructions"
