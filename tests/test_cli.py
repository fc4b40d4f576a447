"""The `mirasol` command: check and bench run end to end; a failing parity check exits 1."""

import json
import subprocess
import sys

import pytest
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
    monkeypatch.setattr(check, "run_check", lambda device, quick=False: [failing])
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


def test_bench_sweep_tables_every_point_with_its_plan_and_plots(tmp_path, monkeypatch,
                                                                 capsys):
    """--sweep at tiny shapes: one row per (N, chunk <= N, mode), the composites' ratio and
    the rate against causal SDPA computed from the row's own times, the torch backend's
    plan named, the worst ratio summarized, a PNG per mode. FlexAttention is left out here
    (its compile; its CPU rows: test_family_flexattention_row_is_forward_only_on_cpu)."""
    from mirasol.benchmark import rivals

    monkeypatch.setattr(rivals, "CHUNKED_RIVALS", [])
    out, plots = tmp_path / "sweep.md", tmp_path / "plots"
    assert cli.main(["bench", "--sweep", "--sweep-seqlens", "16", "64", "--sweep-chunks", "8",
                     "32", "--heads", "2", "--head-dim", "8", "--reps", "1", "--device",
                     "cpu", "--dtype", "float32", "--out", str(out), "--plot",
                     str(plots)]) == 0
    capsys.readouterr()
    lines = out.read_text().splitlines()
    head = next(line for line in lines if line.startswith("N | chunk"))
    columns = head.split(" | ")
    rows = [dict(zip(columns, line.split(" | "))) for line in lines
            if line[:1].isdigit() and " | " in line]
    # chunk 32 > N = 16 is no point of the grid
    assert [(r["N"], r["chunk"], r["mode"]) for r in rows] == [
        ("16", "8", "fwd"), ("16", "8", "fwd+bwd"), ("64", "8", "fwd"), ("64", "8", "fwd+bwd"),
        ("64", "32", "fwd"), ("64", "32", "fwd+bwd")]
    for r in rows:
        ms = float(r["mirasol torch"])
        best = min(float(r["SDPA dense mask"]), float(r["SDPA causal"]))
        # the times are printed to 4 digits
        assert float(r["x best composite"]) == pytest.approx(ms / best, rel=0.01)
        assert r["torch backend's plan"]
    worst = max(float(r["x best composite"]) for r in rows)
    assert any(line.startswith(f"worst ratio to the best composite: {worst:.2f}")
               for line in lines)
    assert sorted(p.name for p in plots.iterdir()) == ["sweep-cpu-float32-fwd-bwd.png",
                                                       "sweep-cpu-float32-fwd.png"]


def test_bench_family_reports_its_tables_and_targets(tmp_path, monkeypatch, capsys):
    """--op family at tiny shapes: each family table with its own SDPA baseline, the
    prefill forward only, the visible fraction, the targets as ratios with a verdict (no
    timing is asserted), the command at the top of the .md. FlexAttention is left out here
    (its compile: test_family_flexattention_row_is_forward_only_on_cpu)."""
    from mirasol.benchmark import rivals

    monkeypatch.setattr(rivals, "FAMILY_RIVALS", [])
    out = tmp_path / "family.json"
    assert cli.main(["bench", "--op", "family", "--device", "cpu", "--seqlen", "32",
                     "--chunk-size", "8", "--heads", "2", "--head-dim", "8", "--reps", "1",
                     "--dtype", "float32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and "targets" in text and ("MISSED" in text or "met" in text)
    tables = json.loads(out.read_text())["tables"]
    assert set(tables) == {"window-sinks/float32", "prefill/float32",
                           "teacher-forcing/float32"}
    window, prefill, tf = (tables[f"{n}/float32"] for n in ("window-sinks", "prefill",
                                                            "teacher-forcing"))
    assert window["baseline"] == tf["baseline"] == "SDPA dense mask"
    assert prefill["baseline"] == "SDPA unmasked" and prefill["visible_fraction"] == 1.0
    assert {r["mode"] for r in prefill["rows"]} == {"fwd"}
    assert {r["mode"] for r in window["rows"]} == {r["mode"] for r in tf["rows"]} == \
        {"fwd", "fwd+bwd"}
    # 4 chunks of 8, window 4: chunk-causal over the chunks, 10 of 16 chunk pairs.
    assert window["visible_fraction"] == 10 / 16
    goals = [t for t in window["targets"] if t["against"] == "SDPA dense mask"]
    assert [(t["mode"], t["at_most"]) for t in goals] == [("fwd", 0.40), ("fwd+bwd", 0.45)]
    assert all(t["ratio"] > 0 and t["met"] in (True, False) for t in goals)
    flex = [t for t in window["targets"] if t["against"] == "FlexAttention"]
    assert flex[0]["met"] is None and flex[0]["missing"] == "FlexAttention"
    md = out.with_suffix(".md").read_text()
    assert md.startswith("command: `") and "--op family" in md and "--chunk-size 8" in md


def test_family_flexattention_row_is_forward_only_on_cpu():
    """The family's FlexAttention rival runs on CPU, compiled, its BlockMask's build time
    in the note, forward only (listed as skipped in fwd+bwd), its target ratio reported."""
    from mirasol import benchmark as mb
    from mirasol.benchmark.timing import TimingPolicy

    problem = mb.family(mb.Setting(heads=2, head_dim=8), seqlen=32, chunk_size=8)["window-sinks"]
    table = mb.run(problem, policy=TimingPolicy(warmup_s=0.0, sample_s=0.001, samples=1))
    assert not table.failed
    flex = [m for m in table.rows if m.name == "FlexAttention"]
    assert [m.mode for m in flex] == ["fwd"] and "block mask (built in" in flex[0].note
    assert any(s.name == "FlexAttention" and s.mode == "fwd+bwd" and "no backward" in s.reason
               for s in table.skipped)
    target = next(t for t in table.targets if t["against"] == "FlexAttention")
    assert target["ratio"] > 0 and target["met"] in (True, False)
    assert "FlexAttention" in mb.format_targets([table])


def test_train_eval_and_demo_flags_are_their_config_fields(capsys):
    """Every field is a flag with the dataclass's default; a flag sets its field."""
    import dataclasses

    from mirasol._options import from_options
    from mirasol.demo import DemoConfig
    from mirasol.train import EvalConfig, TrainConfig

    parse = cli.parser().parse_args
    assert from_options(TrainConfig, parse(["train"])) == TrainConfig()
    assert from_options(DemoConfig, parse(["demo"])) == DemoConfig()
    assert from_options(EvalConfig, parse(["eval", "ckpt"])) == EvalConfig(checkpoint="ckpt")
    changed = from_options(TrainConfig, parse([
        "train", "--av-warmup-steps", "7", "--av-lr-scale", "0.5", "--no-resume",
        "--model", '{"dim": 32}', "--combiner", "ttm", "--stop-at", "3", "--fsdp"]))
    assert changed == TrainConfig(av_warmup_steps=7, av_lr_scale=0.5, resume=False,
                                  model={"dim": 32}, combiner="ttm", stop_at=3, fsdp=True)
    for command, config in (("train", TrainConfig), ("eval", EvalConfig), ("demo", DemoConfig)):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for field in dataclasses.fields(config):
            flag = field.name if field.default is dataclasses.MISSING else \
                "--" + field.name.replace("_", "-")
            assert flag in text and " ".join(field.metadata["help"].split()) in text, flag
    with pytest.raises(SystemExit):
        parse(["train", "--ablation", "smell-only"])
    assert "invalid choice: 'smell-only'" in capsys.readouterr().err


def test_a_config_field_without_help_is_refused():
    import argparse
    import dataclasses

    from mirasol._options import add_options

    @dataclasses.dataclass
    class Bare:
        steps: int = 3

    with pytest.raises(TypeError, match="Bare.steps is not declared with option"):
        add_options(argparse.ArgumentParser(), Bare)


def test_the_command_line_imports_no_triton_before_a_command_runs():
    # `_device` switches on Triton's interpreter for CPU runs, which must happen before
    # triton is first imported: building the parser (the config commands' arguments come
    # from dataclasses beside the model) must not import it.
    code = ("import sys; from mirasol import cli; cli.parser().parse_args(['check']); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
