"""The kernels compile for real GPUs, without one: every launch of an attention forward +
backward, in each specialization the ops use (chunked with lengths, packed cross-attention,
packed causal), with the configs each generation selects, cross-compiles for sm_80 (A100)
and sm_90 (H100) with no register spills, within shared memory, and the attention kernels
use tensor-core instructions for 16-bit inputs. A kernel that only works in the
interpreter fails here.

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
records = []
# Every dtype and head-dim bucket (80: a non-power of two) for the chunked specialization;
# the packed ones (other constexprs, same tiles) at both ends of the table.
matrix = [*itertools.product(("chunked",), (torch.float16, torch.bfloat16, torch.float32),
                             (64, 80, 256)),
          *itertools.product(aot.VARIANTS[1:], (torch.bfloat16, torch.float32), (64, 256))]
for variant, dtype, head_dim in matrix:
    launches = aot.attention_launches((arch // 10, arch % 10), dtype, head_dim, variant)
    for name, launch in launches.items():
        if name == "attn_bwd_delta" and variant != "chunked":
            continue  # the same launch in every variant
        r = aot.resources(launch, arch)
        records.append(dict(kernel=name, variant=variant, dtype=str(dtype), head_dim=head_dim,
                            config=launch.config.__dict__, registers=r.registers,
                            shared=r.shared_bytes, stack=r.stack_bytes, local=r.local_bytes,
                            tensor_core_ops=r.tensor_core_ops))
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
    assert len(records) == 9 * 4 + 2 * 4 * 3
    for r in records:
        where = (f"sm_{arch} {r['kernel']} ({r['variant']}) {r['dtype']} d={r['head_dim']} "
                 f"{r['config']}")
        assert r["stack"] == 0 and r["local"] == 0, f"{where}: spills ({r})"
        assert r["shared"] <= SHARED_LIMIT[arch], f"{where}: {r['shared']} B shared memory"
        if r["kernel"] != "attn_bwd_delta" and r["dtype"] != "torch.float32":
            assert r["tensor_core_ops"] > 0, f"{where}: no tensor-core instructions"
