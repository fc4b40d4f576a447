# Both entry points set themselves up: a virtual environment in .venv with torch 2.13.0
# (CPU build, from this machine's wheel cache when present) and the project installed
# in editable mode with its test extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test workers: one per core, one torch thread each.
WORKERS ?= 2

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench,media,report]'
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(WORKERS) $(PY) -m mirasol demo

check: $(STAMP)
	$(PY) -m mirasol check

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) -q

bench: $(STAMP)
	$(PY) -m mirasol bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
