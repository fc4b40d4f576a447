"""pytest-benchmark view of the `mirasol bench` tables: the same problems and variants.

    pytest bench/ --benchmark-group-by=param:problem,param:mode
    MIRASOL_BENCH_SEQLEN=1024 pytest bench/     # a quicker chunked problem
    MIRASOL_BENCH_FAMILY=1 pytest bench/        # also the family tables (mirasol bench --op family)
"""

import contextlib
import os

import pytest
import torch

from mirasol import benchmark as mb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTING = mb.Setting(device=DEVICE, dtype=torch.float32 if DEVICE == "cpu" else torch.bfloat16)
PROBLEMS = mb.problems(SETTING, seqlen=int(os.environ.get("MIRASOL_BENCH_SEQLEN", 4096)))
if os.environ.get("MIRASOL_BENCH_FAMILY"):
    PROBLEMS.update({f"family-{name}": problem for name, problem in mb.family(SETTING).items()})
CASES = [(name, variant) for name, problem in PROBLEMS.items()
         for variant in problem.variants()[1]]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("problem,variant", CASES,
                         ids=[f"{name}/{variant.name}" for name, variant in CASES])
def test_attention(benchmark, problem, variant, mode):
    with variant.context() if variant.context else contextlib.nullcontext():
        _bench(benchmark, problem, variant, mode)


def _bench(benchmark, problem, variant, mode):
    if mode not in getattr(PROBLEMS[problem], "modes", ("fwd", "fwd+bwd")):
        pytest.skip(f"{problem} is timed in {', '.join(PROBLEMS[problem].modes)} only")
    if mode == "fwd+bwd" and variant.forward_only:
        pytest.skip(variant.forward_only)
    args = variant.inputs(mode == "fwd+bwd")
    try:
        grad_out = torch.randn_like(variant.fn(*args).detach())
    except Exception as e:  # noqa: BLE001 -- a rival that cannot run here (e.g. an SDPA backend)
        if not variant.optional:
            raise
        pytest.skip(mb.lineup.reason(e))

    def call():
        if mode == "fwd":
            with torch.no_grad():
                variant.fn(*args)
        else:
            variant.fn(*args).backward(grad_out)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(problem=problem, variant=variant.name,
                                visible_pairs=PROBLEMS[problem].visible_pairs())
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
