"""`mirasol profile`: the occupancy arithmetic against hand-computed cases, the enumeration
of compiles, the gate's verdict on a record, the command end to end on one kernel, and the
store that lets processes share a compile."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mirasol import profile
from mirasol.cli import main
from mirasol.kernels.aot.archs import ARCHS
from mirasol.kernels.aot.occupancy import occupancy
from mirasol.kernels.aot.registry import KERNELS


@pytest.mark.parametrize("arch, warps, regs, shared, blocks, limiters", [
    # 199 -> 200 regs/thread = 6400/warp; a 16K-register sub-partition holds 2 such warps,
    # the SM 8: one 8-warp block (80 KiB + 1 KiB reserved would allow 2).
    (80, 8, 199, 80 * 1024, 1, ("registers",)),
    # Sub-partitions, not the whole register file: 65536 / 6400 = 10 warps would fit 5
    # blocks of 2 warps; 4 x 2 warps fit only 4.
    (80, 2, 200, 0, 4, ("registers",)),
    # 33 regs round up to 40: 1280/warp, 12 warps per sub-partition, 48 per SM.
    (90, 4, 33, 0, 12, ("registers",)),
    # 48 KiB + 1 KiB reserved: 2 blocks in 100 KiB.
    (86, 4, 64, 48 * 1024, 2, ("shared",)),
    # 33076 + 1024 B rounds up to 34176 (128-byte granules): 3 would need 102528 > 102400.
    (86, 4, 32, 33076, 2, ("shared",)),
    # The per-block opt-in maximum (99 KiB on sm_86) fits once; a byte more never.
    (86, 4, 32, 99 * 1024, 1, ("shared",)),
    (86, 4, 32, 99 * 1024 + 1, 0, ("shared",)),
    # 1536 threads per SM on sm_86/89: six 8-warp blocks.
    (86, 8, 32, 0, 6, ("threads",)),
    (89, 1, 32, 0, 24, ("blocks",)),
    (86, 1, 32, 0, 16, ("blocks",)),
    (100, 4, 32, 0, 16, ("registers", "threads")),
    # 16 warps x 255 regs need 2x the register file: no block fits.
    (90, 16, 255, 0, 0, ("registers",)),
])
def test_occupancy_hand_computed(arch, warps, regs, shared, blocks, limiters):
    occ = occupancy(arch, warps, regs, shared)
    assert (occ.blocks, occ.warps, occ.limiters) == (blocks, blocks * warps, limiters)
    assert occ.max_warps == (48 if arch in (86, 89) else 64)


def test_occupancy_names_bad_arguments():
    with pytest.raises(ValueError, match=r"arch must be one of \[80, 86, 89, 90, 100\]"):
        occupancy(75, 4, 32, 0)
    with pytest.raises(ValueError, match="registers <= 255"):
        occupancy(80, 4, 256, 0)


def test_shared_limits_per_block():
    # The opt-in maxima of the CUDA programming guide: 163, 99, 99, 227, 227 KiB.
    assert {a: s.shared_per_block // 1024 for a, s in ARCHS.items()} == {
        80: 163, 86: 99, 89: 99, 90: 227, 100: 227}


@pytest.mark.parametrize("capability, family", [
    ((8, 0), "sm80"), ((8, 6), "sm86"), ((8, 9), "sm86"), ((9, 0), "sm90"),
    ((10, 0), "sm100"), ((10, 3), "sm100"),
    # Consumer Blackwell has 99 KiB per block, like sm_86: never the 227 KiB rows.
    ((12, 0), "sm86"), ((12, 1), "sm86"),
])
def test_arch_family(capability, family):
    from mirasol.kernels import arch_family

    assert arch_family(capability) == family


def test_cases_cover_every_kernel_variant_dtype_size_and_arch():
    everything = profile.cases()
    # attention: the forward in 6 variants (the family's window, teacher forcing's first-
    # aligned piece and the split-KV forward among them), dK/dV and dQ in 5 (the split is
    # the forward's alone), the variant-free delta, 4 head dims (64 80 128 256), and the
    # repair pass of each (6 + 5 + 5) at head dim 256 only; token pooling: 2 kernels x 2
    # layouts, 3 token counts; 3 dtypes, 5 archs.
    assert len(everything) == ((6 + 5 + 5 + 1) * 4 + (6 + 5 + 5) + 2 * 2 * 3) * 3 * 5
    assert len(set(everything)) == len(everything)
    assert {c.kernel for c in everything} == set(KERNELS)
    buckets = profile.cases(buckets_only=True)
    assert {c.size for c in buckets if c.op == "attention"} == {64, 128, 256}
    assert len(profile.gate_cases()) == ((6 + 5 + 5 + 1) * 3 + (6 + 5 + 5) + 2 * 2 * 3) * 2 * 4


def _specialization(launch):
    """What decides a launch's compile but its tiles and its shapes' divisibility: the
    kernel, its flags and each tensor argument's dtype."""
    flags = {k: v for k, v in launch.constexprs.items() if k not in ("BLOCK_M", "BLOCK_N")}
    return (launch.kernel, tuple(sorted(flags.items())),
            tuple(a.dtype for a in launch.args if isinstance(a, torch.Tensor)))


@pytest.mark.parametrize("variant", ["chunked", "chunked-window", "chunked-teacher",
                                     "chunked-split"])
def test_chunked_variants_are_specializations_the_op_launches(variant, monkeypatch):
    """Each chunked variant the gates compile is one the op's triton path launches: the
    launches of a real forward and backward (recorded, not run) hold every one of the
    variant's (kernels/aot/registry.py), bf16 with grouped-query heads. (The delta kernel
    is variant-free.)"""
    from mirasol.kernels import attention
    from mirasol.kernels._launch import Launch
    from mirasol.kernels.aot.registry import attention_launches

    launched = []
    monkeypatch.setattr(Launch, "run", lambda self: launched.append(_specialization(self)))
    # As on a GPU, where each program of a repair pass checks its own rows: always launched.
    monkeypatch.setattr(attention, "_repair_may_write", lambda *outputs: True)
    B, H, H_kv, N, D, C = 2, 8, 2, 1024, 64, 256
    teacher = variant == "chunked-teacher"
    n = 2 * N if teacher else N
    q, o, do = (torch.zeros(B, H, n, D, dtype=torch.bfloat16) for _ in range(3))
    k, v = (torch.zeros(B, H_kv, n, D, dtype=torch.bfloat16) for _ in range(2))
    lse = torch.zeros(B, H, n)
    family = dict(window=4, sinks=512) if variant != "chunked" else {}
    lengths = None if teacher else torch.full((B,), n, dtype=torch.int32)
    with attention.force_key_splits(4 if variant == "chunked-split" else 1):
        attention.chunked_attn_fwd(q, k, v, C, D ** -0.5, lengths, teacher_forcing=teacher,
                                   **family)
    attention.chunked_attn_bwd(do, q, k, v, o, lse, C, D ** -0.5, lengths,
                               teacher_forcing=teacher, **family)
    compiled = attention_launches((8, 0), torch.bfloat16, D, variant)
    missing = [name for name, launch in compiled.items()
               if name != "attn_bwd_delta" and _specialization(launch) not in launched]
    assert not missing, missing


@pytest.mark.parametrize("kwargs, message", [
    (dict(archs=[75]), r"arch: unknown \[75\]"),
    (dict(kernels=["attn"]), r"kernel: unknown \['attn'\]"),
    (dict(dtypes=["float64"]), r"dtype: unknown"),
    (dict(ops=["token_pool"], kernels=["attn_fwd"]), "no kernel matches"),
])
def test_cases_name_the_bad_filter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        profile.cases(**kwargs)


def _record(**changes):
    fields = dict(arch=90, op="attention", kernel="attn_fwd", variant="chunked",
                  dtype="bfloat16", size=64, family="sm90", size_name="head_dim",
                  config=(128, 64, 8, 3), registers=120, shared_bytes=66560,
                  shared_limit=232448, stack_bytes=0, local_bytes=0, blocks=2, warps=16,
                  max_warps=64, limiters=("registers",), tensor_core_ops={"HGMMA": 16},
                  expects_tensor_cores=True)
    return profile.Record(**{**fields, **changes})


def test_problems():
    assert _record().problems() == []
    assert _record(stack_bytes=568).problems() == ["spills: 568 B stack, 0 B local per thread"]
    assert _record(stack_bytes=568, may_spill=True).problems() == []  # a NaN repair pass
    assert "shared memory" in _record(shared_bytes=232449).problems()[0]
    assert _record(tensor_core_ops={}).problems() == ["no tensor-core instructions"]
    assert _record(tensor_core_ops={}, expects_tensor_cores=False).problems() == []
    where = _record().where()
    for part in ("sm_90", "attn_fwd", "chunked", "bfloat16", "head_dim=64", "block_m=128",
                 "num_warps=8"):
        assert part in where


def test_cli_profile_one_kernel(tmp_path, capsys):
    """End to end under the interpreter's environment (conftest sets TRITON_INTERPRET):
    the worker process compiles with it removed."""
    out = tmp_path / "profile.json"
    status = main(["profile", "--arch", "90", "--kernel", "attn_bwd_delta", "--dtype",
                   "bfloat16", "--size", "64", "--jobs", "1", "--out", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "attn_bwd_delta" in text and "sm_90" in text
    (record,) = json.loads(out.read_text())["records"]
    assert record["registers"] > 0 and record["family"] == "sm90"
    assert "| sm_90 |" in out.with_suffix(".md").read_text()
    assert main(["profile", "--arch", "75"]) == 2
    assert "arch: unknown [75]" in capsys.readouterr().err


_STORE_ONCE = """
import os, sys, time
from mirasol.kernels.aot import cache

log, role = sys.argv[1], sys.argv[2]


def compute():
    with open(log, "a") as f:
        f.write(role + "\\n")
    # Hold the key until the other process has asked for it.
    deadline = time.monotonic() + 120
    while not os.path.exists(log + ".asked") and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"by": role}


if role == "second":
    while not os.path.exists(log):  # the first is computing, holding the key
        time.sleep(0.02)
    open(log + ".asked", "w").close()
print(cache.stored("0" * 64, "test", compute)["by"])
"""


def test_a_key_is_computed_once_across_processes(tmp_path):
    """Two processes ask for the same key at once: the second waits for the first and is
    served its result, which it never computes."""
    log = tmp_path / "computed"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", _STORE_ONCE, str(log), role], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role in ("first", "second")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out for out, _ in results] == ["first\n", "first\n"]
    assert log.read_text() == "first\n"


@pytest.mark.parametrize("name, selection", [("profile.json", profile.cases),
                                             ("profile-oldest-triton.json", profile.gate_cases)])
def test_committed_profile_matches_the_table(name, selection):
    """The committed profiles (`make profiles`) are regenerated with the table and the
    kernels' variants: they hold every compile of their selection (all, under the newest
    triton; the gates', under the oldest), each record's config is the entry its arch's
    family selects now under the profile's triton (no compile needed to check), and every
    record has a compile key of the cubin reader's version (the gates answer from them)."""
    from pathlib import Path

    from mirasol.kernels import arch_family, kernel_config
    from mirasol.kernels._launch import KernelConfig

    from mirasol.kernels.aot.cubin import _VERSION

    path = Path(__file__).parents[1] / "bench" / "results" / name
    meta, records = profile.load(path)
    assert [r.case() for r in records] == selection()
    for r in records:
        capability = divmod(r.arch, 10)
        expected = kernel_config(r.kernel, r.size, getattr(torch, r.dtype), capability,
                                 meta["triton"])
        assert r.family == arch_family(capability)
        # A key of another reader's version answers nothing: the gates would compile every
        # case cold (seen: a 28-minute CI after an edit to the reader's module).
        assert r.key.endswith(f"-{_VERSION}"), (
            f"{r.where()}: key {r.key} is not of the cubin reader's version {_VERSION}; "
            "rerun make profiles")
        assert KernelConfig(*r.config) == expected, (
            f"{r.where()}: profiled {r.config}, the table now says {expected} under triton "
            f"{meta['triton']}; rerun make profiles")


def test_the_gates_skip_only_an_arch_the_profile_shows_identical():
    """The gates compile kernels/aot/archs.GATE_ARCHS: each arch left out must compile to
    another gated arch's code at every committed record (registers, spills, shared memory,
    tensor-core instructions, config), or the gates would miss what it does differently."""
    from pathlib import Path

    from mirasol.kernels.aot.archs import GATE_ARCHS

    path = Path(__file__).parents[1] / "bench" / "results" / "profile.json"
    records = json.loads(path.read_text())["records"]
    fields = ("config", "registers", "stack_bytes", "local_bytes", "shared_bytes",
              "tensor_core_ops")

    def code(arch):
        return {(r["kernel"], r["variant"], r["dtype"], r["size"]): [r[f] for f in fields]
                for r in records if r["arch"] == arch}

    for arch in set(ARCHS) - set(GATE_ARCHS):
        assert any(code(arch) == code(gated) for gated in GATE_ARCHS), f"sm_{arch}"
