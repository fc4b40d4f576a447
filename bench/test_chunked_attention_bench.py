"""pytest-benchmark view of the `mirasol bench` table: the same problem and variants.

    pytest bench/ --benchmark-group-by=param:mode
    MIRASOL_BENCH_SEQLEN=1024 pytest bench/     # a quicker run
"""

import os

import pytest
import torch

from mirasol import benchmark as mb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROBLEM = mb.Problem(seqlen=int(os.environ.get("MIRASOL_BENCH_SEQLEN", 4096)), device=DEVICE,
                     dtype=torch.float32 if DEVICE == "cpu" else torch.bfloat16)
_, VARIANTS = mb.variants(PROBLEM)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[name for name, _, _ in VARIANTS])
def test_chunked_causal_attention(benchmark, variant, mode):
    name, fn, _ = variant
    q, k, v = PROBLEM.inputs(requires_grad=mode == "fwd+bwd")
    do = torch.randn_like(q)

    def call():
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v)
        else:
            fn(q, k, v).backward(do)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(visible_pairs=PROBLEM.visible_pairs(), variant=name)
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
