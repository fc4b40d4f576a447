"""The GPU suite's plumbing, run on CPU with tiny problems (torch backend, fp32, 1 rep).

This is not GPU verification: no kernel, rival or peak fraction is measured on a GPU here.
It checks what the suite does with what it measures: the report files and their fields,
the peak lookup, rivals that fail being recorded as skipped, failures failing the suite
without losing the report, the time budget, and the clear exit without CUDA."""

import json

import pytest
import torch

from mirasol import benchmark as mb
from mirasol import cli, suite
from mirasol.ops.token_pool import MAX_OUTPUT_TOKENS
from mirasol.testing import check

SETTING = mb.Setting(heads=2, head_dim=16)  # CPU, fp32: the torch backend
CHUNKED = mb.ChunkedProblem(seqlen=48, chunk_size=16, setting=SETTING)
CROSS = mb.CrossProblem("tiny", (5, 0, 9), (12, 7, 3), SETTING)
POOL = mb.TokenPoolProblem("tiny", (10, 0, 7), tokens=4, dim=16, setting=SETTING)


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L4", 121), ("NVIDIA A10", 125),
    ("NVIDIA L40S", 362), ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA B200", 2250),
])
def test_peak_of_known_cards(name, tflops):
    for dtype in (torch.bfloat16, torch.float16):
        peak = mb.card_peak(name, dtype)
        assert peak.tflops == tflops and "NVIDIA" in peak.note


@pytest.mark.parametrize("name", [
    "NVIDIA A10G", "NVIDIA L40", "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA GB200",
    "NVIDIA GeForce RTX 4090 D", "NVIDIA H800", "Tesla V100-SXM2-32GB", "CPU, 2 threads",
])
def test_peak_of_unknown_cards_is_not_guessed(name):
    peak = mb.card_peak(name, torch.bfloat16)
    assert peak.tflops is None and "not in mirasol.benchmark.PEAKS_16BIT" in peak.note


def test_no_16bit_peak_for_fp32():
    peak = mb.card_peak("NVIDIA H100 80GB HBM3", torch.float32)
    assert peak.tflops is None and "float32" in peak.note


def test_card_slug():
    assert mb.card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert mb.card_slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"


def test_peak_fraction_column():
    peak = mb.Peak(2.0, "2 TFLOP/s, a made-up card")
    table = mb.run(POOL, reps=1, peak=peak)
    assert all(m.peak_fraction == m.tflops / 2.0 for m in table.rows)
    text = mb.format_table(table)
    assert "of peak" in text and "a made-up card" in text
    assert "of peak" not in mb.format_table(mb.run(POOL, reps=1))  # no peak: no column


def _missing_package(problem):
    raise ImportError("No module named 'rival_pkg'")


def _fails_when_run(problem):
    def fn(q, k, v):
        raise RuntimeError("no kernel for this shape")
    return mb.Variant("broken rival", fn, problem.inputs, optional=True)


class _BrokenProblem:
    """A problem whose own (non-optional) code raises: the suite must record it and go on."""
    title, setting = "broken problem", SETTING

    def variants(self):
        raise RuntimeError("mirasol itself failed")


def test_suite_report_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(mb.rivals, "CHUNKED_RIVALS", [
        mb.Rival("missing", _missing_package, cuda_only=False),
        mb.Rival("broken rival", _fails_when_run, cuda_only=False),
        mb.Rival("gpu rival", _missing_package)])
    rows = [check.CheckRow("token_pool", "torch", torch.float32, 2, 0.4),
            check.CheckRow("token_pool", "torch", torch.float16, 2, 1.7),
            check.CheckRow("token_pool", "triton", torch.bfloat16, 0, None, skipped="why not")]
    monkeypatch.setattr(check, "run_check", lambda device: rows)
    plan = suite.Plan("cpu", (CHUNKED, _BrokenProblem(), CROSS, POOL), reps=1)

    assert suite.main(plan, tmp_path, "mirasol bench --suite gpu") == 1  # parity + error

    slug = mb.card_slug(mb.device_label("cpu"))
    record = json.loads((tmp_path / f"{slug}.json").read_text())
    markdown = (tmp_path / f"{slug}.md").read_text()
    assert record["passed"] is False and record["device"] == mb.device_label("cpu")
    assert record["environment"]["torch"] == torch.__version__
    assert {"triton", "flash-attn", "xformers", "python", "mirasol"} <= set(record["environment"])
    assert [r["ok"] for r in record["parity"]] == [True, False, True]
    assert record["parity"][1]["dtype"] == "torch.float16"
    sections = {s["name"].split(":")[0]: s for s in record["sections"]}
    assert sections["parity"]["error"] == ""
    assert sections["broken problem, float32"]["error"] == "RuntimeError: mirasol itself failed"
    assert [t["title"].split(":")[0] for t in record["tables"]] == [
        "chunked causal attention", "cross-attention (tiny)", "token pooling (tiny)"]
    for table in record["tables"]:
        assert {r["mode"] for r in table["rows"]} == {"fwd", "fwd+bwd"}
        assert all(r["ratio"] == 1.0 for r in table["rows"] if r["name"] == table["baseline"])
        assert all(r["peak_fraction"] is None for r in table["rows"])
        assert table["peak"]["tflops"] is None and "float32" in table["peak"]["note"]
    chunked = record["tables"][0]
    assert "broken rival" not in {r["name"] for r in chunked["rows"]}
    assert {(s["name"], s["mode"], s["reason"]) for s in chunked["skipped"]} == {
        ("missing", "all", "ImportError: No module named 'rival_pkg'"),
        ("broken rival", "fwd", "RuntimeError: no kernel for this shape"),
        ("broken rival", "fwd+bwd", "RuntimeError: no kernel for this shape"),
        ("gpu rival", "all", "CUDA only")}
    assert record["not_run"] == []
    for text in ("# mirasol GPU suite", "## Parity", "FAIL", "skipped: why not",
                 "## Benchmarks", "mirasol bench --suite gpu", "RuntimeError: mirasol itself",
                 "skipped: missing (all): ImportError: No module named 'rival_pkg'",
                 "skipped: broken rival (fwd+bwd): RuntimeError"):
        assert text in markdown, text


def test_time_budget_leaves_tables_listed_as_not_run(tmp_path):
    plan = suite.Plan("cpu", (CHUNKED, POOL), reps=1, parity=False, budget_s=0.0)
    assert suite.main(plan, tmp_path, "budget") == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["tables"] == [] and len(record["not_run"]) == 2
    assert "time budget" in record["not_run"][0]["reason"]
    assert "not run: time budget spent" in next(tmp_path.glob("*.md")).read_text()


def test_gpu_plan():
    full, quick = suite.gpu_plan(), suite.gpu_plan(quick=True)
    assert set(quick.problems) < set(full.problems) and quick.reps < full.reps
    for problem in full.problems:
        assert problem.setting.device == "cuda"
        assert problem.setting.dtype in (torch.bfloat16, torch.float16)
        if isinstance(problem, mb.TokenPoolProblem):
            assert problem.tokens <= MAX_OUTPUT_TOKENS  # the triton backend's limit


def test_gpu_suite_without_cuda_exits_with_a_message(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["bench", "--suite", "gpu", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "mirasol check" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
