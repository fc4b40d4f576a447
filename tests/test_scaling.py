"""The scaling benchmark: the flat baseline it compares against, the table end to end on a
micro config, and `mirasol params`."""

import functools
import json
import math

import torch

from mirasol import benchmark, cli
from mirasol.benchmark import model_scaling
from mirasol.model import Mirasol, preset
from mirasol.model.baseline import FlatBaseline
from mirasol.testing import tolerances

MICRO = preset("tiny", frames_per_chunk=2, dim=32, video=dict(image_size=16, width=32),
               audio=dict(sample_rate=4000, n_fft=128, hop_length=64, n_mels=16, width=32),
               text=dict(width=32))


def _inputs(frames: int) -> dict:
    return model_scaling._qa_inputs(MICRO, frames, "cpu")


def test_baseline_trains_on_any_number_of_chunks():
    torch.manual_seed(0)
    model = FlatBaseline(MICRO)
    count = sum(p.numel() for p in model.parameters())
    for frames in (4, 8):  # 2 and 4 chunks, one set of parameters
        out = model(**_inputs(frames))
        assert out.tokens.shape == (1, frames // 2, model.tokens_per_chunk, MICRO.dim)
        assert out.logits.shape[-1] == MICRO.text.vocab_size
        out.loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        model.zero_grad()
    assert sum(p.numel() for p in model.parameters()) == count


def test_baseline_attends_across_chunks_unlike_mirasol():
    torch.manual_seed(0)
    baseline, mirasol = FlatBaseline(MICRO).eval(), Mirasol(MICRO).eval()
    x = _inputs(8)
    late = x["video"].clone()
    late[:, -2:] = torch.rand_like(late[:, -2:])  # the last chunk's frames only
    with torch.no_grad():
        flat = [baseline.encode(v, x["audio"])[:, 0] for v in (x["video"], late)]
        chunked = [mirasol.encode(v, x["audio"])[1][:, 0] for v in (x["video"], late)]
    assert (flat[0] - flat[1]).abs().max() > tolerances.DEPENDENCE
    torch.testing.assert_close(chunked[0], chunked[1])


def test_scaling_table_end_to_end():
    table = benchmark.scaling(MICRO, frames=(4, 8), reps=1)
    assert [(r.model, r.mode, r.frames) for r in table.rows] == [
        (model, mode, frames) for mode in ("fwd", "fwd+bwd")
        for model in ("mirasol", "flat baseline") for frames in (4, 8)]
    for row in table.rows:
        assert math.isfinite(row.median_ms) and row.median_ms > 0
        assert math.isfinite(row.ratio) and math.isfinite(row.mem_ratio)
        assert (row.ratio == 1.0) == (row.frames == 4)
        assert isinstance(row.meets_target, bool) == (row.model == "mirasol" and row.frames == 8)
    text = benchmark.format_scaling(table)
    assert "4 vs 8 frames (2 vs 4 chunks" in text and "measured side by side" in text


def test_bench_scaling_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "scaling",
                        functools.partial(benchmark.scaling, MICRO, frames=(4, 8)))
    out = tmp_path / "scaling.json"
    assert cli.main(["bench", "--op", "scaling", "--device", "cpu", "--reps", "1",
                     "--out", str(out)]) == 0
    assert "flat baseline" in capsys.readouterr().out
    table = json.loads(out.read_text())["tables"]["scaling"]
    assert len(table["rows"]) == 8 and table["config"]["dim"] == MICRO.dim
    assert out.with_suffix(".md").exists()


def test_params_lists_every_preset(capsys):
    assert cli.main(["params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("tiny", "small", "base", "mirasol3b"):
        assert sum(line.startswith(f"{name} ") for line in lines) == 2  # with, without audio
    with torch.device("meta"):
        total = Mirasol(preset("mirasol3b")).parameter_counts()["total"]
    row = next(line.split() for line in lines if line.startswith("mirasol3b "))
    assert row[-2] == cli._millions(total) == "3.00B"


def test_params_one_preset(capsys):
    assert cli.main(["params", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny " in out and "small" not in out
    assert cli.main(["params", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
