"""The GPU suite's plumbing, run on CPU with tiny problems (torch backend, fp32).

This is not GPU verification: no kernel, rival or peak fraction is measured on a GPU here.
It checks what the suite does with what it measures: the report files and their fields,
the peak lookup, failures (a rival's, one of ours, a parity row's, a section's) recorded
as rows while the rest goes on, the deadline and its estimates, the timed loop's syncs,
and the clear exit without CUDA. The device command's rehearsal is tests/test_rehearsal.py.
"""

import json
import time

import pytest
import torch

from mirasol import benchmark as mb
from mirasol import cli, suite
from mirasol.benchmark import timing
from mirasol.ops.token_pool import MAX_OUTPUT_TOKENS
from mirasol.testing import check

FAST = timing.TimingPolicy(warmup_s=0.0, sample_s=0.001, samples=1)

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
    table = mb.run(POOL, peak=peak, policy=FAST)
    assert all(m.peak_fraction == m.tflops / 2.0 for m in table.rows)
    text = mb.format_table(table)
    assert "of peak" in text and "a made-up card" in text
    assert "of peak" not in mb.format_table(mb.run(POOL, policy=FAST))  # no peak: no column


class _CountingTimer:
    """A stand-in timer that records, at every sync and mark, how many calls were made."""
    name = "counting"

    def __init__(self):
        self.calls, self.syncs, self.marks = 0, [], []

    def fn(self):
        self.calls += 1

    def mark(self):
        self.marks.append(self.calls)
        return len(self.marks) * 1.0  # 1 ms between consecutive marks

    def sync(self):
        self.syncs.append(self.calls)

    def ms(self, start, end):
        return end - start


def test_timed_loop_has_no_sync_inside():
    timer = _CountingTimer()
    policy = timing.TimingPolicy(warmup_s=0.0, sample_s=0.004, samples=3)
    result = timing.time_calls(timer.fn, timer, policy)
    # 1 warm-up call, 1 sizing call (1 ms: 4 calls per 4 ms sample), 3 samples of 4 calls.
    assert (result.warmup_calls, result.calls, result.samples) == (1, 4, 3)
    assert timer.calls == 1 + 1 + 3 * 4
    # Syncs: after the first call, after the warm-up, after the sizing call, once after the
    # last sample.
    assert timer.syncs == [1, 1, 2, 14]
    assert timer.marks == [1, 2, 2, 6, 6, 10, 10, 14]  # pairs around each sample's 4 calls
    assert result.device_ms == pytest.approx(1 / 4)


def test_cpu_timer_counts_a_sleep():
    result = timing.time_calls(lambda: time.sleep(0.002), timing.CpuTimer(),
                               timing.TimingPolicy(warmup_s=0.0, sample_s=0.01, samples=2))
    assert result.calls >= 2 and 1.9 <= result.device_ms < 20
    assert result.host_ms == pytest.approx(result.device_ms, rel=0.05)  # one clock on CPU


def test_a_variant_is_measured_inside_its_context():
    import contextlib
    entered = []

    @contextlib.contextmanager
    def held():
        entered.append("in")
        yield
        entered.append("out")

    def fn(x, logits):
        assert entered == ["in"], "called outside the variant's context"
        return x.sum() * logits.sum()

    variant = mb.Variant("in context", fn, POOL.inputs, context=held)
    for backward in (False, True):
        entered.clear()
        m = timing.measure(variant, POOL, backward=backward, policy=FAST)
        assert entered == ["in", "out"] and m.calls >= 1 and m.host_syncs is None


def test_sm_clock_says_why_it_has_no_reading(monkeypatch):
    assert timing.sm_clock_mhz("cpu") == (None, "n/a on CPU")

    def no_pynvml(device=None):
        raise ModuleNotFoundError("pynvml does not seem to be installed")
    monkeypatch.setattr(torch.cuda, "clock_rate", no_pynvml)
    monkeypatch.setattr(timing.shutil, "which", lambda name: None)
    assert timing.sm_clock_mhz("cuda") == (
        None, "ModuleNotFoundError: pynvml does not seem to be installed; no nvidia-smi")


def _missing_package(problem):
    raise ImportError("No module named 'rival_pkg'")


def _fails_when_run(problem):
    def fn(q, k, v):
        raise RuntimeError("no kernel for this shape")
    return mb.Variant("broken rival", fn, problem.inputs, optional=True)


class _BrokenProblem:
    """A problem whose own code raises before any row: the suite records it and goes on."""
    title, setting = "broken problem", SETTING

    def variants(self):
        raise RuntimeError("mirasol itself failed")


class _BrokenVariantProblem:
    """One of our variants raises when run: its rows fail, the table's others are kept."""
    title, setting = "broken variant", SETTING

    def variants(self):
        baseline, variants, skipped = CHUNKED.variants()

        def broken(q, k, v):
            raise ValueError("kernel said no")
        return mb.Lineup(baseline, [mb.Variant("mirasol broken", broken, CHUNKED.inputs),
                                    *variants[:2]], skipped)

    def flops(self, backward):
        return CHUNKED.flops(backward)


def _rows(op, backend, dtype, device):
    if op == "cross_attention":
        raise RuntimeError("CUDA error: an illegal memory access")
    ratio = 1.7 if (op, dtype) == ("token_pool", torch.float16) else 0.4
    return check.CheckRow(op, backend, dtype, 2, ratio)


def _plan(*steps, **kw) -> suite.Plan:
    return suite.Plan("cpu", steps, rehearsal=True, **{"policy": FAST, **kw})


def test_suite_report_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(mb.rivals, "CHUNKED_RIVALS", [
        mb.Rival("missing", _missing_package, cuda_only=False),
        mb.Rival("broken rival", _fails_when_run, cuda_only=False),
        mb.Rival("gpu rival", _missing_package)])
    monkeypatch.setattr(check, "check_row", _rows)
    plan = _plan(suite.ParityStep("token_pool", (torch.float32, torch.float16), 1.0),
                 suite.ParityStep("cross_attention", (torch.float32,), 1.0),
                 *(suite.TableStep(p, 1.0) for p in (CHUNKED, _BrokenProblem(),
                                                     _BrokenVariantProblem(), CROSS, POOL)))

    assert suite.main(plan, tmp_path, "mirasol bench --suite gpu") == 1

    slug = "rehearsal-" + mb.card_slug(mb.device_label("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{slug}.json", f"{slug}.md",
                                                           "suite.log"]
    record = json.loads((tmp_path / f"{slug}.json").read_text())
    markdown = (tmp_path / f"{slug}.md").read_text()
    assert record["rehearsal"] is True and "CPU REHEARSAL" in markdown
    assert record["passed"] is False and record["finished"] is True
    assert record["interrupted"] == "" and record["device"] == mb.device_label("cpu")
    assert record["environment"]["torch"] == torch.__version__
    assert {"triton", "flash-attn", "xformers", "python", "mirasol",
            "rivals absent"} <= set(record["environment"])
    parity = record["parity"]
    assert [(p["op"], p["backend"], p["dtype"], p["ok"]) for p in parity] == [
        ("token_pool", "triton", "torch.float32", True),
        ("token_pool", "torch", "torch.float32", True),
        ("token_pool", "triton", "torch.float16", False),
        ("token_pool", "torch", "torch.float16", False),
        ("cross_attention", "triton", "torch.float32", False),
        ("cross_attention", "torch", "torch.float32", False)]
    assert parity[4]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "Traceback" in parity[4]["traceback"] and parity[4]["row"] is None
    sections = {s["name"].split(":")[0]: s for s in record["sections"]}
    assert sections["parity float32, float16"]["status"] == "ok"
    broken = sections["broken problem, float32"]
    assert (broken["status"], broken["error"]) == ("FAILED", "RuntimeError: mirasol itself failed")
    assert "Traceback" in broken["traceback"]
    titles = [t["title"].split(":")[0] for t in record["tables"]]
    assert titles == ["chunked causal attention", "broken variant", "cross-attention (tiny)",
                      "token pooling (tiny)"]
    for table in record["tables"]:
        assert {r["mode"] for r in table["rows"]} == {"fwd", "fwd+bwd"}
        assert all(r["ratio"] == 1.0 for r in table["rows"] if r["name"] == table["baseline"])
        assert all(r["peak_fraction"] is None and r["host_ms"] > 0 for r in table["rows"])
        assert table["peak"] is None and table["timer"].startswith("perf_counter")
        assert [c["mode"] for c in table["clocks"]] == ["fwd", "fwd+bwd"]
    chunked, with_broken = record["tables"][:2]
    assert "broken rival" not in {r["name"] for r in chunked["rows"]}
    assert {(s["name"], s["mode"], s["reason"]) for s in chunked["skipped"]} >= {
        ("missing", "all", "ImportError: No module named 'rival_pkg'"),
        ("broken rival", "fwd", "RuntimeError: no kernel for this shape"),
        ("broken rival", "fwd+bwd", "RuntimeError: no kernel for this shape"),
        ("gpu rival", "all", "CUDA only")}
    assert [(f["name"], f["mode"], f["reason"]) for f in with_broken["failed"]] == [
        ("mirasol broken", m, "ValueError: kernel said no") for m in ("fwd", "fwd+bwd")]
    assert "Traceback" in with_broken["failed"][0]["traceback"]
    assert len(with_broken["rows"]) == 4  # the two other variants, both modes
    assert any("mirasol broken (fwd): ValueError: kernel said no" in f
               for f in record["failures"])
    for text in ("# mirasol GPU suite", "## Parity", "FAIL", "## Benchmarks",
                 "mirasol bench --suite gpu", "RuntimeError: mirasol itself",
                 "FAILED: RuntimeError: CUDA error: an illegal memory access",
                 "FAILED: mirasol broken (fwd): ValueError: kernel said no",
                 "skipped: missing (all): ImportError: No module named 'rival_pkg'",
                 "skipped: broken rival (fwd+bwd): RuntimeError"):
        assert text in markdown, text
    log = (tmp_path / "suite.log").read_text()
    assert "fwd      SDPA dense mask: " in log and " ms (host " in log  # rows with numbers


def test_estimates_that_do_not_fit_are_listed_as_not_run(tmp_path):
    plan = _plan(suite.TableStep(POOL, 0.0), suite.TableStep(CHUNKED, 1e6), deadline_s=60.0)
    assert suite.main(plan, tmp_path, "estimates") == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [t["title"] for t in record["tables"]] == [POOL.title]
    last = record["sections"][-1]
    assert last["status"].startswith("not run: estimated 1e+06 s") and last["seconds"] == 0
    assert "not run: estimated" in next(tmp_path.glob("*.md")).read_text()


class _SlowVariantProblem:
    """Two quick variants, then one that takes far longer than the deadline allows."""
    title, setting = "slow variant", SETTING

    def variants(self):
        baseline, variants, skipped = CHUNKED.variants()

        def slow(q, k, v):
            time.sleep(60)
        return mb.Lineup(baseline, [*variants[:2], mb.Variant("slow", slow, CHUNKED.inputs)],
                         skipped)

    def flops(self, backward):
        return CHUNKED.flops(backward)


def test_the_deadline_cuts_a_section_and_keeps_its_rows(tmp_path):
    plan = _plan(suite.TableStep(POOL, 0.0), suite.TableStep(_SlowVariantProblem(), 0.0),
                 suite.TableStep(CROSS, 0.0), deadline_s=8.0, reserve_s=0.5)
    start = time.perf_counter()
    assert suite.main(plan, tmp_path, "deadline") == suite.INTERRUPTED
    # The cut lands at the first Python instruction after the alarm: on a loaded 2-core
    # machine a call in C (a benchmark's timed op) carries it a second or two past the
    # deadline (CI: 5.4 s of a 4 s deadline), while the slow variant alone takes 60 s.
    assert time.perf_counter() - start < 8.0 + 10.0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["interrupted"] == "deadline" and record["finished"] is False
    assert [s["status"] for s in record["sections"][1:]] == [
        "ok", "cut: deadline", "not run: cut by deadline"]
    pool, cut = record["tables"]
    assert len(pool["rows"]) == 2
    assert [r["name"] for r in cut["rows"]] == [v.name for v in CHUNKED.variants()[1][:2]]
    assert "cut by deadline" in next(tmp_path.glob("*.md")).read_text()


def test_a_swallowed_cut_comes_again(tmp_path):
    class Swallowing:
        title, setting = "swallows the first cut", SETTING

        def variants(self):
            def fn(q, k, v):
                try:
                    time.sleep(30)
                except BaseException:  # noqa: BLE001 -- as a library's broad handler might
                    pass
                time.sleep(30)
            return mb.Lineup("x", [mb.Variant("x", fn, CHUNKED.inputs)], [])

    plan = _plan(suite.TableStep(Swallowing(), 0.0), deadline_s=2.0, reserve_s=0.5)
    start = time.perf_counter()
    assert suite.main(plan, tmp_path, "swallow") == suite.INTERRUPTED
    assert time.perf_counter() - start < 4.0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["sections"][-1]["status"] == "cut: deadline"


def test_gpu_plan():
    full, quick = suite.gpu_plan(), suite.gpu_plan(quick=True)
    assert set(quick.steps) < set(full.steps)
    assert (full.deadline_s, quick.deadline_s) == (300, 150)
    assert full.device == "cuda" and full.policy.sample_s >= 0.02
    # bf16 parity of every op comes first, then the headline table.
    assert [s.op for s in quick.steps[:4]] == list(check.CHECKS)
    assert all(s.dtypes == (torch.bfloat16,) for s in quick.steps[:4])
    parity = {(s.op, d) for s in full.steps if isinstance(s, suite.ParityStep)
              for d in s.dtypes}
    assert parity == {(op, d) for op in check.CHECKS for d in suite.DTYPES}
    assert len({s.label for s in full.steps}) == len(full.steps)
    for step in full.steps:
        if isinstance(step, suite.TableStep):
            problem = step.problem
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
