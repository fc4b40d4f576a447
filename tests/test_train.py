"""Training: the schedule, identical continuation after a resume, evaluation, the
report; a 2-process data-parallel run equals one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mirasol.model import load_checkpoint
from mirasol.testing import tolerances
from mirasol.train import TrainConfig, evaluate, export, lr_factor, step_indices, train

# A model small enough to train a few steps in seconds; synthetic clips in its format
# (4 chunks of 2 frames of 16x16 at 4 fps, 8 kHz audio).
MODEL = {"frames_per_chunk": 2, "dim": 32,
         "video": {"image_size": 16, "width": 32},
         "audio": {"n_fft": 128, "hop_length": 64, "n_mels": 16, "width": 32},
         "combiner": {"num_tokens": 4, "memory_size": 6, "bottleneck_dim": 16},
         "text": {"width": 32}}


def _config(tmp_path, name, **changes):
    settings = dict(out=str(tmp_path / name), model=MODEL, batch_size=4, lr=3e-3, warmup=2,
                    log_every=1, checkpoint_every=3, progress=False, backend="torch")
    return TrainConfig(**{**settings, **changes})


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 10, 110) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert factors[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_ranks_split_each_global_batch():
    assert step_indices(3, 8, 0, 2) + step_indices(3, 8, 1, 2) == list(range(24, 32))
    with pytest.raises(ValueError, match="divisible"):
        step_indices(0, 6, 0, 4)


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_resume_continues_exactly(tmp_path, combiner):
    straight = train(_config(tmp_path, "straight", steps=6, combiner=combiner))
    train(_config(tmp_path, "resumed", steps=6, stop_at=4, checkpoint_every=2,
                  combiner=combiner))
    # the next process: same folder and settings, resumes from step 4
    resumed = train(_config(tmp_path, "resumed", steps=6, combiner=combiner))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    logged = [json.loads(line) for line in
              (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [r["loss"] for r in logged] == [json.loads(line)["loss"] for line in straight_log]
    last = (tmp_path / "resumed" / "checkpoints" / "last").read_text().strip()
    assert last == "step-0000006"
    loaded = load_checkpoint(tmp_path / "resumed" / "checkpoints" / last)
    for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_training_lowers_the_loss_and_evaluation_reports_every_kind(tmp_path):
    config = _config(tmp_path, "run", steps=20, checkpoint_every=0, batch_size=8)
    model = train(config)
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) < sum(losses[:5])
    from mirasol.train import dataset

    result = evaluate(model, dataset(config, model.config, "val", 24))
    assert result["count"] == 24
    assert set(result["by_kind"]) == {"colour_during_tone", "tone_during_colour", "coincide"}
    for r in (result, *result["by_kind"].values()):
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["accuracy"] <= 1


def test_bfloat16_autocasts_on_cpu_as_on_cuda(tmp_path, monkeypatch):
    # --dtype bfloat16: the forward runs under bf16 autocast on CPU too, so the attention
    # ops see bf16 inputs (the torch backend's native bf16 path); weights stay fp32.
    from mirasol.ops import chunked_attention

    seen = []
    fwd = chunked_attention._torch_fwd
    monkeypatch.setattr(chunked_attention, "_torch_fwd",
                        lambda q, *args: seen.append(q.dtype) or fwd(q, *args))
    model = train(_config(tmp_path, "bf16", steps=2, checkpoint_every=0, dtype="bfloat16"))
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    train(_config(tmp_path, "fp32", steps=1, checkpoint_every=0))  # auto: fp32 on CPU
    assert set(seen) == {torch.float32}


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ablation"):
        train(_config(tmp_path, "x", steps=1, ablation="smell-only"))
    with pytest.raises(ValueError, match="fsdp"):
        train(_config(tmp_path, "x", steps=1, fsdp=True, eval_every=1))
    with pytest.raises(ValueError, match=r"keep must be >= 1 .*got 0"):
        train(_config(tmp_path, "x", steps=1, keep=0))


STEPS, LR = 4, 3e-3  # of the data-parallel runs


def _torchrun(tmp_path, name, nproc, *extra):
    args = ["--out", str(tmp_path / name), "--model", json.dumps(MODEL), "--steps", str(STEPS),
            "--batch-size", "4", "--lr", str(LR), "--warmup", "2", "--log-every", "1",
            "--checkpoint-every", str(STEPS), "--backend", "torch", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "mirasol", "train", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", "-m", "mirasol", "train", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / name
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()]
    # export: an FSDP2 run's checkpoint is sharded (the others' pass through whole).
    return losses, load_checkpoint(export(run / "checkpoints" / f"step-{STEPS:07d}",
                                          tmp_path / f"{name}-model"))


def _assert_same_run(one_losses, one, losses, model):
    assert len(losses) == len(one_losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(one_losses))
    for (name, a), b in zip(one.state_dict().items(), model.state_dict().values()):
        if name.endswith("k_proj.bias"):
            # Softmax ignores a key bias (it shifts a query's logits by a constant): its true
            # gradient is 0, what is left is rounding noise amplified by Adam.
            assert (b - a).abs().max() <= tolerances.adam_drift(STEPS, LR), name
        else:
            torch.testing.assert_close(b, a, **tolerances.DATA_PARALLEL_PARAMETERS, msg=name)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, mode):
    one_losses, one = _torchrun(tmp_path, "one", 1)
    _assert_same_run(one_losses, one, *_torchrun(tmp_path, mode, 2,
                                                 *(["--fsdp"] if mode == "fsdp" else [])))


@pytest.mark.parametrize("nproc, fsdp", [(2, False), (4, False), (4, True)])
def test_context_parallel_matches_one_process(tmp_path, nproc, fsdp):
    """--context-parallel 2: each clip's chunks shared by 2 ranks in the A/V model, alone
    (2 processes) and under DDP or FSDP2 over a (data 2, context 2) mesh (4 processes)."""
    one_losses, one = _torchrun(tmp_path, "one", 1)
    _assert_same_run(one_losses, one, *_torchrun(tmp_path, f"context-{nproc}", nproc,
                                                 "--context-parallel", "2",
                                                 *(["--fsdp"] if fsdp else [])))
