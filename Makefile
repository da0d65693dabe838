# Quick start: `make demo` (the server under a mixed-SLO load) and `make test`; `make lint` for CI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first, pinned: a looser requirement pulls the CUDA build (gigabytes) on a CPU machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m pip install --quiet 'apache-tvm-ffi>=0.1.11' && $(PY) -m pip install --quiet --no-deps 'xgrammar==0.2.9'
	$(PY) -m adaserve.kernels
	touch $(STAMP)

demo: setup
	$(PY) -m adaserve.cli demo

test: setup
	$(PY) -m adaserve.cli download smollm2-135m
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/engine_step.py

clean:
	rm -rf $(VENV)
