"""Training that survives being killed (mirasol/train.py, mirasol/model/checkpoint.py).

A harness runs ``mirasol train`` (tiny preset, CPU) and SIGKILLs it at chosen moments —
while a checkpoint is being written (its hidden temporary folder exists), right after a
checkpoint that an evaluation follows, and at random times inside the training steps —
restarting it after each kill. The final weights must equal an uninterrupted run's
bitwise, and ``metrics.jsonl`` must hold each step's records exactly once, equal to the
uninterrupted run's (but for the wall-clock rate). Damaged files get errors that name them,
and a resume skips a damaged newest checkpoint for the previous one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mirasol.model import CheckpointError, load_checkpoint, preset, save_checkpoint
from mirasol.model.mirasol import Mirasol
from mirasol.testing import assert_identical, tolerances
from mirasol.train import TrainConfig, checkpoint_folders, latest_checkpoint, train

STEPS, CHECKPOINT_EVERY, EVAL_EVERY = 24, 4, 8
# The runs' TrainConfig fields (as `mirasol train` flags: see _flags).
SETTINGS = dict(preset="tiny", steps=STEPS, batch_size=4, warmup=2, av_warmup_steps=6,
                log_every=1, checkpoint_every=CHECKPOINT_EVERY, eval_every=EVAL_EVERY,
                eval_size=8, keep=3, progress=False)
# A restart that finds the run complete does nothing: a few kills per moment suffice.
RANDOM_KILLS = 4


def _flags(settings: dict) -> list[str]:
    """``mirasol train``'s flags for TrainConfig fields: ``--field-name value``, a bool
    ``--field-name`` or ``--no-field-name``."""
    flags = []
    for name, value in settings.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags += [f"--{flag}", str(value)]
    return flags


def _start(out: Path, nproc: int = 1, **changes) -> subprocess.Popen:
    """``mirasol train`` of SETTINGS updated with ``changes`` into ``out``: one process, or
    ``nproc`` under torchrun (gloo on the CPU)."""
    torchrun = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [])
    return subprocess.Popen([sys.executable, *torchrun, "-m", "mirasol", "train", "--out",
                             str(out), *_flags({**SETTINGS, **changes})],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]


def _assert_same_weights(got: Path, want: Path) -> None:
    """The runs' last checkpoints hold bitwise equal weights."""
    a = load_file(latest_checkpoint(want) / "model.safetensors")
    b = load_file(latest_checkpoint(got) / "model.safetensors")
    assert b.keys() == a.keys()
    for name in a:
        assert_identical(b[name], a[name])


def _records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"}
            for line in lines]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait()
    return False


def _writing_a_checkpoint(out: Path) -> bool:
    folder = out / "checkpoints"
    return folder.is_dir() and any(p.name.startswith(".step-") and ".tmp-" in p.name
                                   for p in folder.iterdir())


def _last_record(out: Path) -> dict:
    """The last complete record of metrics.jsonl ({} before any)."""
    path = out / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.exists() else []):
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
    return {}


def _pointer(out: Path) -> str:
    try:
        return (out / "checkpoints" / "last").read_text().strip()
    except OSError:
        return ""


def test_a_run_killed_at_any_moment_resumes_exactly(tmp_path):
    reference = tmp_path / "uninterrupted"
    started = time.monotonic()
    proc = _start(reference)
    while not (reference / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.005)
    startup = time.monotonic() - started
    _finish(proc)
    training = time.monotonic() - started - startup

    out = tmp_path / "killed"
    moments = []
    # While a checkpoint is written: its hidden temporary folder exists.
    proc = _start(out)
    if _kill_when(proc, lambda: _writing_a_checkpoint(out)):
        moments.append(("writing a checkpoint", _pointer(out)))
        leftovers = [p.name for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
        assert leftovers, "the kill was meant to land while a checkpoint was written"
    # During an evaluation: the training record of an evaluation step is the last logged.
    proc = _start(out)

    def evaluating() -> bool:
        last = _last_record(out)
        return "split" not in last and last.get("step", 0) % EVAL_EVERY == 0 < last.get("step", 0)

    if _kill_when(proc, evaluating):
        moments.append(("evaluating", _pointer(out)))
    # Random moments inside the steps left: once step s is logged, after a random fraction
    # of a step's time.
    rng = random.Random(0)
    step_s = training / STEPS
    for _ in range(RANDOM_KILLS):
        resumed = int(_pointer(out).split("-")[1]) if _pointer(out) else 0
        if resumed >= STEPS - 1:
            break
        target = rng.randint(resumed + 1, STEPS - 1)
        extra = rng.uniform(0.0, step_s)
        proc = _start(out)
        if _kill_when(proc, lambda: _last_record(out).get("step", 0) >= target
                      and (time.sleep(extra) or True)):
            moments.append((f"{extra:.3f} s into step {target + 1}", _pointer(out)))
    _finish(_start(out))

    print(f"start-up {startup:.1f} s, training {training:.1f} s; killed: {moments}")
    assert len(moments) >= 1 + RANDOM_KILLS // 2, moments
    assert latest_checkpoint(out).name == f"step-{STEPS:07d}"
    _assert_same_weights(out, reference)
    assert _records(out) == _records(reference)  # every step once, the same numbers
    assert len(checkpoint_folders(out)) == 3  # --keep 3


# ---------------------------------------------------------------------- damaged files


@pytest.fixture
def checkpoint(tmp_path):
    model = Mirasol(preset("tiny"))
    return save_checkpoint(model, tmp_path / "ckpt"), model


def test_a_truncated_weight_file_is_named(checkpoint):
    folder, _ = checkpoint
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable "
                                              r"safetensors file") as info:
        load_checkpoint(folder)
    assert info.value.path == weights


def test_corrupt_bytes_in_the_header_are_named(checkpoint):
    folder, _ = checkpoint
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable"):
        load_checkpoint(folder)


@pytest.mark.parametrize("content,problem", [("{", "not a readable JSON file"),
                                             ('{"dim": "x", "nope": 1}', "not a MirasolConfig")])
def test_a_bad_config_is_named(checkpoint, content, problem):
    folder, _ = checkpoint
    (folder / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=rf"config\.json: {problem}"):
        load_checkpoint(folder)


def test_a_missing_file_is_named(checkpoint):
    folder, _ = checkpoint
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(folder)


def test_save_replaces_a_checkpoint_whole(checkpoint):
    folder, model = checkpoint
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(model, folder)
    assert_identical(next(load_checkpoint(folder).parameters()), next(model.parameters()))
    assert [p.name for p in folder.parent.iterdir()] == ["ckpt"]  # no temporary left


def _config(out: Path, **changes) -> TrainConfig:
    return TrainConfig(out=str(out), preset="tiny", steps=6, batch_size=4, warmup=1,
                       av_warmup_steps=2, log_every=1, checkpoint_every=2, progress=False,
                       **changes)


@pytest.mark.parametrize("damage", ["truncated weights", "missing optimizer", "bad trainer json",
                                    "dangling pointer"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, damage):
    full = tmp_path / "full"
    train(_config(full))
    out = tmp_path / "damaged"
    train(_config(out, stop_at=4))
    newest = out / "checkpoints" / "step-0000004"
    if damage == "truncated weights":
        (newest / "model.safetensors").write_bytes(b"\x00" * 10)
    elif damage == "missing optimizer":
        (newest / "optimizer.safetensors").unlink()
    elif damage == "bad trainer json":
        (newest / "trainer.json").write_text('{"step": ')
    else:  # the pointer names a checkpoint that is gone: the newest present one serves
        (out / "checkpoints" / "last").write_text("step-0000099\n")
    if damage == "dangling pointer":
        train(_config(out))
    else:
        with pytest.warns(UserWarning, match=r"skipping damaged checkpoint .*step-0000004"):
            train(_config(out))
    for (name, a), b in zip(load_checkpoint(full / "checkpoints" / "step-0000006")
                            .state_dict().items(),
                            load_checkpoint(out / "checkpoints" / "step-0000006")
                            .state_dict().values()):
        assert_identical(b, a)
    assert [r["step"] for r in _records(out)] == list(range(1, 7))


# ------------------------------------------------------------------ two gloo processes

# A dead peer ends the run within this bound (measured: about 1 s).
EXIT_BOUND_S = 60


def _torchrun(out: Path) -> subprocess.Popen:
    """``mirasol train`` on 2 gloo processes, without evaluations."""
    return _start(out, 2, eval_every=0)


def _rank_pid(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (read off the children's environments)."""
    children = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True,
                              text=True).stdout.split()
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(sys.platform != "linux",
                    reason="finds the worker of a rank through /proc/<pid>/environ")
def test_a_killed_rank_ends_the_run_and_the_restart_resumes_exactly(tmp_path):
    reference = tmp_path / "uninterrupted"
    _finish(_torchrun(reference))

    out = tmp_path / "killed"
    agent = _torchrun(out)
    while _last_record(out).get("step", 0) < STEPS // 2 and agent.poll() is None:
        time.sleep(0.01)
    rank1 = _rank_pid(agent.pid, 1)
    assert rank1 is not None and agent.poll() is None, "the run ended before the kill"
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = agent.communicate(timeout=EXIT_BOUND_S)
    ended = time.monotonic() - killed
    assert agent.returncode != 0
    # torchrun names the dead worker and its signal, and stops the surviving one.
    assert "SIGKILL" in stderr and "rank" in stderr.lower(), stderr[-3000:]
    print(f"the run ended {ended:.1f} s after rank 1 was killed, at "
          f"{_pointer(out) or 'no checkpoint'}")

    _finish(_torchrun(out))
    _assert_same_weights(out, reference)
    assert _records(out) == _records(reference)


# ------------------------------------------------------------- FSDP2 sharded checkpoints

FSDP_STEPS = 8
FSDP_SETTINGS = dict(SETTINGS, steps=FSDP_STEPS, eval_every=0, keep=9)


def _run(out: Path, nproc: int, **changes) -> None:
    _finish(_start(out, nproc, **FSDP_SETTINGS, **changes))


def _export(run: Path, out: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mirasol", "export", str(run), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_continuation(got: Path, want: Path) -> None:
    """Equal continuation across world sizes: the data-parallel rule of test_train.py (a
    different process count sums the gradients in another order)."""
    a = load_checkpoint(want).state_dict()
    for name, b in load_checkpoint(got).state_dict().items():
        if name.endswith("k_proj.bias"):  # its true gradient is 0 (test_train.py)
            assert (b - a[name]).abs().max() <= tolerances.adam_drift(FSDP_STEPS, 2e-3), name
        else:
            torch.testing.assert_close(b, a[name], **tolerances.DATA_PARALLEL_PARAMETERS,
                                       msg=name)


def test_fsdp_checkpoints_are_sharded_and_resume_on_another_world_size(tmp_path):
    half = FSDP_STEPS // 2
    # 2 FSDP2 processes: each rank writes its shard; no model.safetensors.
    sharded = tmp_path / "fsdp2"
    _run(sharded, 2, fsdp=True)
    last = latest_checkpoint(sharded)
    assert not (last / "model.safetensors").exists()
    assert len(list((last / "shards").glob("*.distcp"))) == 2
    with pytest.raises(CheckpointError, match="sharded FSDP2 training checkpoint"):
        load_checkpoint(last)
    exported = tmp_path / "exported"
    _export(sharded, exported)
    # 2 -> 1: half the steps on 2 FSDP2 processes, the rest on one.
    two_one = tmp_path / "2to1"
    _run(two_one, 2, fsdp=True, stop_at=half)
    _run(two_one, 1)
    _assert_continuation(latest_checkpoint(two_one), exported)
    # 1 -> 2: half on one process, the rest on 2 FSDP2 processes (a full checkpoint read
    # by both ranks, then sharded ones written).
    one_two = tmp_path / "1to2"
    _run(one_two, 1, stop_at=half)
    _run(one_two, 2, fsdp=True)
    one_two_export = tmp_path / "1to2-exported"
    _export(one_two, one_two_export)
    _assert_continuation(one_two_export, exported)
    # A damaged shard: the resume skips that checkpoint for the previous one.
    shard = next((last / "shards").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.warns(UserWarning, match=rf"skipping damaged checkpoint .*{last.name}: "
                                         r".*shards: not a readable sharded checkpoint"):
        train(TrainConfig(out=str(sharded), **FSDP_SETTINGS))
    assert [r["step"] for r in _records(sharded)] == list(range(1, FSDP_STEPS + 1))
