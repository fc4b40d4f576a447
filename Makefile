# Every entry point but gpu-suite sets itself up: a virtual environment in .venv with
# torch 2.13.0 (CPU build, from this machine's wheel cache when present) and the project
# installed in editable mode with its test extras. `make test` also builds a second one,
# .venv-triton36: the same torch beside the oldest triton pyproject.toml admits (3.6.0,
# torch 2.11's), where tests/test_oldest_triton.py runs the cross-compile gate and the
# parity tests' pinned cases. numpy < 2.4 there: triton 3.6's interpreter converts
# 1-element arrays with int(), which numpy 2.4 refuses (triton 3.9 squeezes them first).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OLDEST_VENV  ?= .venv-triton36
OLDEST_STAMP := $(OLDEST_VENV)/.installed
# Test workers: one per core, one torch thread each.
WORKERS ?= 2

.PHONY: venv venv-oldest-triton demo test gate-oldest-triton profiles check bench gpu-suite clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench,media,report,diffusers]'
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet torch==2.13.0 triton==3.6.0 'numpy<2.4' \
		-e '.[test]'
	touch $(OLDEST_STAMP)

# The environment alone (CMakeLists.txt uses it to compile the kernels).
venv: $(STAMP)
venv-oldest-triton: $(OLDEST_STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(WORKERS) $(PY) -m mirasol demo

check: $(STAMP)
	$(PY) -m mirasol check

test: $(STAMP) $(OLDEST_STAMP)
	OMP_NUM_THREADS=1 MIRASOL_OLDEST_TRITON_PYTHON=$(OLDEST_VENV)/bin/python \
		$(PY) -m pytest -n $(WORKERS) -q --durations=25

# The cross-compile gate under triton 3.6 alone (tests/test_oldest_triton.py, part of
# make test): compiles what bench/results/profile-oldest-triton.json does not answer.
gate-oldest-triton: $(STAMP) $(OLDEST_STAMP)
	MIRASOL_OLDEST_TRITON_PYTHON=$(OLDEST_VENV)/bin/python \
		$(PY) -m pytest -q -m oldest_triton_gate tests/test_oldest_triton.py

# After a kernel or tuning-table change: the committed profiles the gates answer from, by
# compile key (store hits where nothing changed). bench/results/profile.{json,md}: every
# compile under the newest triton; profile-oldest-triton.{json,md}: the gate's under 3.6.
# Both are written even where a compile fails; the status says whether any did.
profiles: $(STAMP) $(OLDEST_STAMP)
	status=0; \
	env -u TRITON_INTERPRET $(PY) -m mirasol profile --jobs $(WORKERS) \
		--out bench/results/profile.json || status=1; \
	env -u TRITON_INTERPRET $(OLDEST_VENV)/bin/python -m mirasol profile --gate \
		--jobs $(WORKERS) --out bench/results/profile-oldest-triton.json || status=1; \
	exit $$status

bench: $(STAMP)
	$(PY) -m mirasol bench

# On a CUDA machine, with the machine's own python3 and torch (no venv, nothing fetched):
# parity and benchmarks against the rivals by a hard deadline of 300 s from the start,
# install included; <card>.md, .json and suite.log in $(OUT), rewritten after every section.
# SUITE_ARGS=--quick: 150 s; SUITE_ARGS=--rehearsal: the same path on the CPU, labelled so.
OUT ?= bench/results
gpu-suite:
	bash bench/gpu_suite.sh $(OUT) $(SUITE_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .hypothesis build *.egg-info
