# langchain-vllm-budget: the two commands of the README, and the ones behind them.
#   make demo   the main job against an embedded local vLLM server (installs what it needs)
#   make test   lint, type checks, unit and integration tests against real vLLM servers
#   make bench  benchmarks against the real server; results in benchmarks/results/

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VLLM_BUDGET_CACHE ?= $(HOME)/.cache/langchain-vllm-budget
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install services demo demo-steps test test-steps lint unit integration bench clean

install:
	@bash scripts/bootstrap.sh

services: install
	@bash scripts/postgres.sh install

# demo and test record their wall time and outcome in benchmarks/results/make-{demo,test}.txt.
demo:
	@bash scripts/record.sh make-demo $(MAKE) --no-print-directory demo-steps

demo-steps: install
	@bash scripts/with-run-dir.sh $(PY) -m graphs

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests/unit_tests --doctest-modules langchain_vllm_budget

integration: services
	@bash scripts/with-run-dir.sh $(PY) -m pytest tests/integration_tests

test:
	@bash scripts/record.sh make-test $(MAKE) --no-print-directory test-steps

test-steps: lint services
	@bash scripts/with-run-dir.sh $(PY) -m pytest tests/unit_tests langchain_vllm_budget \
		tests/integration_tests --doctest-modules --durations=25

bench: install
	@bash scripts/with-run-dir.sh $(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
