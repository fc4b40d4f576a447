"""The package users install: ``python -m build`` makes an sdist and, from it, a wheel;
the wheel (not editable) installed into a fresh virtual environment imports, knows its
version and passes ``mirasol check --quick`` run from outside the checkout.

The fresh environment borrows the already installed dependencies (torch, triton, ...)
through a .pth file rather than installing torch again (a minute and 700 MB): what this
checks is the wheel's own contents and entry points; the dependency ranges are
pyproject.toml's, installed by every ``make`` target."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import mirasol

ROOT = Path(__file__).parents[1]


def _run(*cmd, cwd, env=None, timeout=600):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_sdist_and_wheel_hold_the_package_and_the_wheel_installs(tmp_path):
    """One test, one build: two builds of the checkout at once (a fixture per xdist worker)
    share its egg-info, and one fails (seen in a fresh-clone make test)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    # The checkout's setuptools (no isolated build environment: nothing fetched).
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=dist)
    _check_contents(dist)
    _check_install(dist, tmp_path)


def _check_contents(dist):
    sdist, = dist.glob(f"mirasol_kernels-{mirasol.__version__}.tar.gz")
    wheel, = dist.glob(f"mirasol_kernels-{mirasol.__version__}-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mirasol/kernels/attention.py" in names and "mirasol/kernels/aot/cubin.py" in names
    assert "mirasol/testing/pytest_plugin.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    for field in (f"Version: {mirasol.__version__}", "License: Apache-2.0",
                  "Requires-Dist: torch<2.14,>=2.11", "Classifier: Framework :: Pytest",
                  "Description-Content-Type: text/markdown", "# mirasol"):
        assert field in metadata, field
    entry_points = zipfile.ZipFile(wheel).read(meta.replace("METADATA", "entry_points.txt"))
    assert b"mirasol = mirasol.cli:main" in entry_points
    assert b"[pytest11]" in entry_points
    assert sdist.stat().st_size > 0


def _check_install(dist, tmp_path):
    wheel, = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                     cwd=tmp_path).strip())
    # After the venv's own site-packages, where the wheel goes: the dependencies.
    (site / "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet",
         wheel, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(python, "-c", "import mirasol, mirasol.kernels; print(mirasol.__file__)",
                 cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(venv), where  # the wheel's, not the checkout's
    assert _run(venv / "bin" / "mirasol", "--version", cwd=tmp_path,
                env=env).strip() == f"mirasol {mirasol.__version__}"
    out = _run(venv / "bin" / "mirasol", "check", "--quick", cwd=tmp_path,
               env=dict(env, TRITON_INTERPRET="1"))
    assert "all parity checks passed" in out and "triton" in out, out
