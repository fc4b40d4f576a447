"""The tuning table across tritons: kernel_config takes the running triton's own entry where
the table has one, and bench/tune_configs.py gives a triton its own entry only where no
config fits every triton (one subprocess: the tool drops TRITON_INTERPRET on import)."""

import subprocess
import sys
from pathlib import Path

import torch

from mirasol.kernels import KernelConfig, kernel_config
from mirasol.kernels import _launch
from mirasol.kernels._configs import PER_TRITON, TABLE

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_config_takes_the_running_tritons_own_entry(monkeypatch):
    shared = KernelConfig(*TABLE["attn_bwd_dkdv"]["sm90"]["fp32"][128])
    own = KernelConfig(16, 16, 2, 1)
    assert own != shared
    here, other = _launch.triton_minor(), "2.0"
    entry = {"attn_bwd_dkdv": {"sm90": {"fp32": {128: tuple(vars(own).values())}}}}
    monkeypatch.setattr(_launch, "_PER_TRITON", {other: entry})
    assert kernel_config("attn_bwd_dkdv", 80, torch.float32, (9, 0)) == shared
    monkeypatch.setattr(_launch, "_PER_TRITON", {here: entry})
    # head dim 80 takes the 128 bucket; other buckets, dtypes and families keep the table's
    assert kernel_config("attn_bwd_dkdv", 80, torch.float32, (9, 0)) == own
    assert kernel_config("attn_bwd_dkdv", 64, torch.float32, (9, 0)) == KernelConfig(
        *TABLE["attn_bwd_dkdv"]["sm90"]["fp32"][64])
    assert kernel_config("attn_bwd_dkdv", 128, torch.bfloat16, (9, 0)) == KernelConfig(
        *TABLE["attn_bwd_dkdv"]["sm90"]["half"][128])
    assert kernel_config("attn_bwd_dkdv", 128, torch.float32, (8, 0)) == KernelConfig(
        *TABLE["attn_bwd_dkdv"]["sm80"]["fp32"][128])


def test_committed_per_triton_entries_differ_from_the_shared_ones():
    """A per-triton entry exists only where the shared one does not serve that triton."""
    for version, kernels in PER_TRITON.items():
        assert version.count(".") == 1, version
        for kernel, families in kernels.items():
            for family, classes in families.items():
                for dclass, sizes in classes.items():
                    for size, config in sizes.items():
                        assert config != TABLE[kernel][family][dclass][size], (
                            version, kernel, family, dclass, size)


# Candidates in the tool's order, and which fit under which triton: a stands in for the
# current entry (fits 3.9 only), b fits 3.6 only, c both.
_TUNE = """
import json, sys
sys.path.insert(0, "bench")
import tune_configs as t
from mirasol.kernels import KernelConfig
fits = {"3.6": set(json.loads(sys.argv[1])), "3.9": set(json.loads(sys.argv[2]))}
configs = [KernelConfig(64, 64, 8, 3), KernelConfig(64, 32, 8, 3), KernelConfig(32, 32, 8, 3)]
checked = []
t._candidates = lambda *a: iter(configs)
t._current = lambda *a: None
def fake(version):
    def check(*args):
        config = args[-1]
        checked.append((version, configs.index(config)))
        return configs.index(config) in fits[version]
    return check
t._fits = fake("3.9")
t._fits_under = lambda python, job, config: fake("3.6")(config)
job, found = t.tune(("attn_fwd", "sm80", "fp32", 64), pythons={"3.6": "py36", "3.9": None})
print(json.dumps([found, checked]))
"""


def _tune(fits_36, fits_39):
    import json

    run = subprocess.run([sys.executable, "-c", _TUNE, json.dumps(fits_36),
                          json.dumps(fits_39)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found, checked = json.loads(run.stdout.splitlines()[-1])
    return found, [tuple(c) for c in checked]


def test_tuner_prefers_one_config_for_every_triton():
    # 0 fits 3.9 only, 1 fits 3.6 only, 2 both: 2 for both, though each has a larger own.
    found, checked = _tune([1, 2], [0, 2])
    assert found == {"3.6": [32, 32, 8, 3], "3.9": [32, 32, 8, 3]}
    # 3.6 first; 3.9 only where the candidate could still serve both, or 3.9 has no pick
    assert checked == [("3.6", 0), ("3.9", 0), ("3.6", 1), ("3.9", 1), ("3.6", 2), ("3.9", 2)]


def test_tuner_gives_each_triton_its_own_where_none_serves_both():
    found, checked = _tune([1], [0, 2])
    assert found == {"3.6": [64, 32, 8, 3], "3.9": [64, 64, 8, 3]}
    # 3 candidates were all tried: 3.9's first at 0, 3.6's at 1; 2 failed 3.6, so 3.9 not asked
    assert checked == [("3.6", 0), ("3.9", 0), ("3.6", 1), ("3.9", 1), ("3.6", 2)]


def test_tuner_reports_a_triton_with_no_config():
    found, _ = _tune([], [0])
    assert found is None


_WRITE = """
import sys
sys.path.insert(0, "bench")
import tune_configs as t
t.write_table({("attn_fwd", "sm80", "fp32", 64): {"3.9": (16, 16, 4, 2), "3.10": (16, 16, 4, 2)},
               ("attn_fwd", "sm80", "fp32", 128): {"3.9": (16, 16, 4, 1), "3.10": (32, 16, 4, 2)},
               ("attn_fwd", "sm90", "half", 64): {"3.9": (128, 64, 8, 3), "3.10": (64, 64, 4, 2)}},
              sys.argv[1])
"""


def test_written_table_shares_what_serves_every_triton(tmp_path):
    out = tmp_path / "configs.py"
    run = subprocess.run([sys.executable, "-c", _WRITE, str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    written = {}
    exec(out.read_text(), written)
    # the newest triton's config is the shared one where they differ (3.10 > 3.9)
    assert written["TABLE"] == {"attn_fwd": {
        "sm80": {"fp32": {64: (16, 16, 4, 2), 128: (32, 16, 4, 2)}},
        "sm90": {"half": {64: (64, 64, 4, 2)}}}}
    assert written["PER_TRITON"] == {"3.9": {"attn_fwd": {
        "sm80": {"fp32": {128: (16, 16, 4, 1)}}, "sm90": {"half": {64: (128, 64, 8, 3)}}}}}
