# Every target does its own set-up from a fresh clone: a .venv, a CPU build of
# torch where no NVIDIA GPU is visible (a bare `pip install torch` would pull a
# multi-GB CUDA build), then this package in editable mode with its dev extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/chinchilla
STAMP  := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml
RUNS   ?= runs/tiny
OUT    ?=
TORCH_CPU_VERSION ?= 2.13.0
# Elsewhere, point this at PyTorch's CPU wheel index to avoid the CUDA build.
TORCH_INDEX ?=

.PHONY: help install test demo lint bench sweep fit plan clean

help:
	@echo "make demo                  sweep configs/tiny.yaml on CPU, fit it (loss, a task metric), verify a prediction"
	@echo "make test                  run the test suite"
	@echo "make lint                  ruff"
	@echo "make bench                 speed and memory benchmarks (ratios)"
	@echo "make plan  CONFIG=...      print the planned grid"
	@echo "make sweep CONFIG=...      train every planned run"
	@echo "make fit   RUNS=...        fit the three approaches to a sweep or a CSV"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing torch with CUDA"; \
		$(PY) -m pip install --quiet "torch>=2.2"; \
	else \
		echo "no GPU: installing the CPU build of torch $(TORCH_CPU_VERSION)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_CPU_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),); \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check chinchilla tests benchmarks
	$(VENV)/bin/ruff format --check chinchilla tests benchmarks

demo: $(STAMP)
	$(CLI) plan $(CONFIG)
	$(CLI) sweep $(CONFIG) --out $(RUNS)
	$(CLI) fit $(RUNS)
	$(CLI) fit $(RUNS) --metric continue/exact_match@8
	$(CLI) verify $(RUNS)

plan: $(STAMP)
	$(CLI) plan $(CONFIG)

sweep: $(STAMP)
	$(CLI) sweep $(CONFIG) $(if $(OUT),--out $(OUT),)

fit: $(STAMP)
	$(CLI) fit $(RUNS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
