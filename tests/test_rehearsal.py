"""The GPU suite's device command rehearsed on the CPU: ``bench/gpu_suite.sh`` end to end
(its argument handling, the launcher that runs mirasol from the checkout, the deadline
counted from the script's start, SIGTERM passed on), with ``--rehearsal``: the CPU
stand-in device, tiny shapes, the triton backend through the interpreter.

It is cut at its deadline, and by SIGTERM, and the partial report must be on disk, flat
in the output folder (what comes back from the GPU machine: at most 8 files). Not GPU
verification: no kernel runs on a GPU here, and the report says so. The pip step is not
exercised (SUITE_NO_INSTALL=1: the test must not reinstall the environment it runs in);
the suite runs from the checkout the same way with or without it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirasol import suite

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_suite.sh"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bash, timeout(1), signals")


def _start(out: Path, *args: str, **env: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "SUITE_NO_INSTALL": "1",
           "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(["bash", str(SCRIPT), str(out), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _report(out: Path) -> tuple[dict, str]:
    (js,) = out.glob("*.json")
    return json.loads(js.read_text()), js.with_suffix(".md").read_text()


def _returned(out: Path) -> None:
    """What the GPU machine sends back: at most 8 plain files, no deeper than two levels."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 2 for p in files)
    assert not [p for p in files if p.name.startswith(".")]  # no atomic-write leftovers


def _cut_run_checks(record: dict, markdown: str, why: str) -> None:
    assert record["rehearsal"] and "CPU REHEARSAL" in markdown
    assert record["interrupted"] == why and record["finished"] is False
    assert record["failures"] == []  # a cut is not a failure of what ran
    statuses = [s["status"] for s in record["sections"]]
    assert statuses[0] == "ok" and statuses[1] == "ok"  # start-up, then a completed section
    assert f"cut: {why}" in statuses or f"not run: cut by {why}" in statuses
    # Every step of the plan is in the report, run or not.
    assert len(record["sections"]) == 1 + len(suite.rehearsal_plan().steps)
    assert record["parity"][0]["ok"] and record["parity"][0]["backend"] == "triton"
    assert f"cut by {why}" in markdown and "## Parity" in markdown


def test_dry_run_shows_the_deadlines(tmp_path):
    def command(*args):
        run = subprocess.run(["bash", str(SCRIPT), str(tmp_path), *args], cwd=ROOT,
                             env={**os.environ, "SUITE_DRY_RUN": "1", "SUITE_NO_INSTALL": "1"},
                             capture_output=True, text=True, check=True)
        return run.stdout.splitlines()[-1]
    for args, deadline in (((), suite.DEFAULT_DEADLINE_S), (("--quick",), suite.QUICK_DEADLINE_S),
                           (("--rehearsal",), suite.rehearsal_plan().deadline_s),
                           (("--deadline", "42"), 42)):
        line = command(*args)
        assert f"--deadline {deadline:g}" in line and "--started-at" in line, line
        assert line.startswith(f"timeout --signal=TERM --kill-after={suite.BACKSTOP_S:g} ")
    # The suite's alarm comes before the script's SIGTERM, in every plan.
    assert suite.Plan("cpu").reserve_s > suite.BACKSTOP_S
    assert suite.rehearsal_plan().reserve_s > suite.BACKSTOP_S


def test_rehearsal_cut_at_its_deadline(tmp_path):
    # The whole rehearsal takes ~14 s on this machine kind (2 cores; start-up and the torch
    # rows by ~5 s, the triton parity rows last): the alarm, 3 s before this deadline (1 s
    # before the script's SIGTERM), falls after the first sections and before the end.
    deadline = 14.0
    start = time.monotonic()
    proc = _start(tmp_path, "--rehearsal", "--no-estimates", "--deadline", f"{deadline:g}")
    stdout, stderr = proc.communicate(timeout=deadline + 30)
    elapsed = time.monotonic() - start
    assert proc.returncode == suite.INTERRUPTED, stderr
    assert elapsed <= deadline + 1.0, elapsed  # the deadline counts from the script's start
    record, markdown = _report(tmp_path)
    _cut_run_checks(record, markdown, "deadline")
    assert record["seconds"] <= deadline
    tables = record["tables"]
    assert tables and all(t["rows"] for t in tables[:-1])
    # The last table may be the section the alarm cut before its first row (on a loaded
    # machine, CI's gate compiling beside it: seen once in a fresh-clone make test).
    assert tables[-1]["rows"] or "cut: deadline" in [s["status"] for s in record["sections"]]
    if any(t["rows"] for t in tables):
        # Rows were printed with their numbers as they were measured.
        assert " ms (host " in stdout and " ms (host " in (tmp_path / "suite.log").read_text()
    _returned(tmp_path)
    print(f"deadline {deadline:g} s: exited after {elapsed:.1f} s; report at "
          f"{record['seconds']:.1f} s")


def test_rehearsal_cut_by_sigterm(tmp_path):
    proc = _start(tmp_path, "--rehearsal", "--no-estimates", "--deadline", "120")
    start = time.monotonic()
    js = None
    while time.monotonic() - start < 90 and proc.poll() is None:
        js = next(tmp_path.glob("*.json"), None)
        if js is not None and any(s["name"].startswith("chunked") and s["status"] == "ok"
                                  for s in json.loads(js.read_text())["sections"]):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the rehearsal ended before it could be cut"
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    stopped = time.monotonic() - signalled
    assert proc.returncode == suite.INTERRUPTED, stderr
    assert stopped < 5.0, stopped
    record, markdown = _report(tmp_path)
    _cut_run_checks(record, markdown, "SIGTERM")
    _returned(tmp_path)
    print(f"SIGTERM after {signalled - start:.1f} s: exited {stopped:.2f} s later")
