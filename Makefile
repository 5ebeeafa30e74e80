# ganserve — every target creates .venv and installs what it needs.
#   make run    serve the bundled models on localhost:50051 (HTTP on :8080, metrics on :8000)
#   make test   lint, types, the manual, stub drift, the whole test suite
#   make docs   build the manual (docs/, mkdocs.yml) strictly into site/
#   make bench  closed-loop benchmark against the real server (figures printed), the
#               bundled DCGAN and its int8 copy (BENCH_MODELS=... for others)
#   make gpu-pack  wheels for an offline GPU machine, cut into carryable parts in
#               benchmarks/gpu/parts/ (large downloads; GPU_PACK_ARGS=--no-cuda-libs etc.)
#   make stress open-loop overload test of the real server (2x/4x saturation, recovery,
#               unread streams' memory) on the bundled DCGAN (figures printed, ~2 min;
#               STRESS_ARGS="--duration 15" etc. for its flags)
#   make models re-train, export and evaluate the bundled models from DATA_DIR (and the
#               int8 copy of mnist-dcgan)
#   make image-test  build and run the image with podman, checked by the client (root, minutes)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build; it lies on disk here. GPU users: install the torch build you need first.
TORCH_VERSION ?= 2.13.0
DATA_DIR ?= ../shared/data
MODELS ?= mnist-mlp mnist-dcgan mnist-infogan mnist-cdcgan fashion-cdcgan
PORT ?= 50051
METRICS_PORT ?= 8000
HTTP_PORT ?= 8080
BENCH_MODELS ?= mnist-dcgan mnist-dcgan-int8
STRESS_ARGS ?=
GPU_PACK_ARGS ?=

.PHONY: run test lint typecheck docs bench gpu-pack stress models protos docker image-test clean help

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs no torch: the [server] extra is ONNX Runtime + gRPC + Prometheus.
$(VENV)/.server: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[server]'
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	@if command -v npm >/dev/null 2>&1 && [ -f clients/node/package-lock.json ]; then \
		npm ci --prefix clients/node --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Node.js client test will be skipped"; fi
	touch $@ $(VENV)/.server

run: $(VENV)/.server
	$(BIN)/ganserve serve --model-dir models --host 127.0.0.1 --port $(PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# Strict: a broken link or anchor, a page outside the nav, or an unknown GANSERVE_*
# variable fails the build. NO_MKDOCS_2_WARNING quiets a banner of the Material theme.
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: lint typecheck docs
	$(BIN)/python -m pytest -q

bench: $(VENV)/.dev
	for model in $(BENCH_MODELS); do \
		$(BIN)/python benchmarks/bench.py --model-dir models --model $$model || exit 1; \
	done

# benchmarks/gpu/README.md: what to carry to the GPU machine and what to run there.
gpu-pack: $(VENV)/.server
	$(BIN)/python benchmarks/gpu/pack.py $(GPU_PACK_ARGS)

stress: $(VENV)/.dev
	$(BIN)/python benchmarks/stress.py --model-dir models --model mnist-dcgan $(STRESS_ARGS)

models: $(VENV)/.dev
	$(BIN)/ganserve build-model $(MODELS) --data-root $(DATA_DIR) --models-dir models
ifneq ($(filter mnist-dcgan,$(MODELS)),)
	$(BIN)/ganserve quantize --model models/mnist-dcgan --out models/mnist-dcgan-int8/1/model.onnx
	$(BIN)/ganserve evaluate --model models/mnist-dcgan-int8 --repeats 5 --write --data-dir $(DATA_DIR)/mnist
endif

protos: $(VENV)/.dev
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. \
		protos/ganserve/v1/generator.proto protos/ganserve/kserve/v2/grpc_predict_v2.proto
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. \
		protos/ganserve/kserve/v2/model_config.proto protos/ganserve/kserve/v2/model_statistics.proto

docker:
	docker build -t ganserve:latest .

image-test: $(VENV)/.server
	VENV=$(VENV) deploy/image/image-test.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
