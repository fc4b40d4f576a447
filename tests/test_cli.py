"""The `mirasol` command: check and bench run end to end; a failing parity check exits 1."""

import json
import subprocess
import sys

import torch

from mirasol import cli
from mirasol.testing import check


def test_check_passes_on_this_machine():
    proc = subprocess.run([sys.executable, "-m", "mirasol", "check", "--no-bench"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all parity checks passed" in proc.stdout
    assert "triton   float32" in proc.stdout and "torch    float64" in proc.stdout
    # A backend that cannot run here is listed with its reason, not hidden.
    assert "skipped: the Triton interpreter computes bf16 tl.dot incorrectly" in proc.stdout


def test_check_exits_nonzero_when_parity_fails(monkeypatch, capsys):
    failing = check.CheckRow("chunked_causal_attention", "torch", torch.float32, 3, 1.7)
    monkeypatch.setattr(check, "run_check", lambda device: [failing])
    assert cli.main(["check", "--no-bench", "--device", "cpu"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bench_prints_ratios_and_writes_results(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, "-m", "mirasol", "bench", "--seqlen", "256",
                           "--heads", "2", "--head-dim", "16", "--reps", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for variant in ("mirasol torch", "SDPA dense mask", "SDPA unmasked", "SDPA padded + key mask",
                    "SDPA block-diagonal mask"):
        assert variant in proc.stdout
    tables = json.loads(out.read_text())["tables"]
    assert set(tables) == {"chunked", "cross-text", "cross-combiner"}
    for table in tables.values():
        assert {r["mode"] for r in table["rows"]} == {"fwd", "fwd+bwd"}
        baseline = [r for r in table["rows"] if r["name"] == table["baseline"]]
        assert len(baseline) == 2 and all(r["ratio"] == 1.0 for r in baseline)
    assert out.with_suffix(".md").exists()
