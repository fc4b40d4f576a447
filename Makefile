# Both entry points set themselves up: a virtual environment in .venv with torch 2.13.0
# (CPU build, from this machine's wheel cache when present) and the project installed
# in editable mode with its test extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test workers: one per core, one torch thread each.
WORKERS ?= 2

.PHONY: venv demo test check bench gpu-suite clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench,media,report]'
	touch $(STAMP)

# The environment alone (CMakeLists.txt uses it to compile the kernels).
venv: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(WORKERS) $(PY) -m mirasol demo

check: $(STAMP)
	$(PY) -m mirasol check

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) -q

bench: $(STAMP)
	$(PY) -m mirasol bench

# On a CUDA machine: parity, benchmarks against the rivals, bench/results/<card>.md and .json
# (SUITE_ARGS=--quick for the short plan).
gpu-suite: $(STAMP)
	$(PY) -m mirasol bench --suite gpu $(SUITE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
