# Quick start: `make demo` (set up, fetch the default model, generate) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, pinned: a looser requirement pulls the CUDA build (gigabytes) on a CPU machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) -m adaserve.cli demo

test: setup
	$(PY) -m adaserve.cli download smollm2-135m
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/engine_step.py

clean:
	rm -rf $(VENV)
