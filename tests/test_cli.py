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
