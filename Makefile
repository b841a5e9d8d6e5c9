# Vigil developer commands. `make help` lists them. Everything runs in .venv at the repo root.
SHELL := bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: help deps venv demo test test-unit test-kafka lint bench soak kafka-up kafka-down kafka-status fake-llm worker clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

deps: ## Check the system tools (Java 17+, Maven, Prometheus, python3-venv); apt-get installs missing ones as root
	@PYTHON=$(PYTHON) VENV=$(VENV) ops/deps.sh

venv: $(STAMP) ## Create .venv and install Vigil with its test tools

demo: deps venv ## Run the support agent end to end (starts and stops Kafka and the fake LLM if needed)
	$(BIN)/python ops/demo.py

test: deps lint ## Lint, then unit and integration tests (broker: VIGIL_TEST_BROKER, see README)
	$(BIN)/pytest --durations=15

test-unit: deps venv ## Unit tests only (no broker)
	$(BIN)/pytest -m "not kafka"

test-kafka: deps venv ## Integration tests on the real broker only
	$(BIN)/pytest -m kafka

lint: venv ## ruff on everything, mypy (strict) on schemas/, streams/ and agents/
	$(BIN)/ruff check schemas streams agents tests ops
	$(BIN)/ruff format --check schemas streams agents tests ops
	$(BIN)/mypy schemas streams agents

bench: deps venv ## Benchmarks on the local broker: one JSON of ratios (BENCH_ARGS=--small: quick mode)
	$(BIN)/python -m ops.bench $(BENCH_ARGS)

soak: venv ## Fault scenarios N times in both guarantees: lost/duplicates/order/stalls (SOAK_ARGS="--runs 2")
	$(BIN)/python -m ops.soak $(SOAK_ARGS)

kafka-up: deps venv ## Start the local Kafka broker (no Docker; jars from Maven Central)
	VIGIL_PYTHON=$(BIN)/python ops/kafka/kafka.sh up

kafka-down: ## Stop the local Kafka broker (data is kept)
	ops/kafka/kafka.sh down

kafka-status: ## Is the local broker running?
	ops/kafka/kafka.sh status

fake-llm: venv ## Serve the fake OpenAI-compatible LLM on 127.0.0.1:8089
	$(BIN)/vigil fake-llm --port 8089

worker: venv ## Run a worker against the local broker and fake LLM
	VIGIL_LLM_API_BASE=http://127.0.0.1:8089/v1 $(BIN)/vigil worker

clean: ## Remove caches (not the Kafka data: use `ops/kafka/kafka.sh reset`)
	rm -rf .pytest_cache .mypy_cache .ruff_cache *.egg-info .cache/demo-data .cache/demo-logs
