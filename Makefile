# One venv (.venv) for everything; the client also installs alone: pip install ./client
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
export HTTP_PORT GRPC_PORT METRICS_PORT
# The production model's name comes from the contract (contract/__init__.py), never restated here.
# (contract/ is standard-library only, so the system Python reads it before `make setup`.)
NAME ?= $(shell $(PYTHON) -c 'import contract; print(contract.DEFAULT_MODEL)')
RUN ?= runs/$(NAME)
# A random-weight demo repository written by export/model_repository.py (`make dev-repository`),
# served on its own ports so it never collides with `make serve`.
DEV_REPOSITORY ?= runs/dev_repository
DEV_HTTP_PORT ?= 8010
DEV_GRPC_PORT ?= 8011
DEV_METRICS_PORT ?= 8012

.PHONY: setup serve dev-repository dev-serve contract configs demo test reliability train export evaluate audit split bench loadtest app clean

setup: $(STAMP)

# Re-installs only when a dependency list changes.
$(STAMP): pyproject.toml client/pyproject.toml scripts/install_test_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e "./client[grpc,http,s3,ray]" -e ".[train,load,app,test]"
	bash scripts/install_test_deps.sh
	touch $(STAMP)

serve: setup
	$(PY) -m server.launch

# Rewrites the client's pinned copy of the contract (tests/test_contract.py checks it).
contract:
	$(PYTHON) -m contract

# Rewrites every committed config.pbtxt from the writer (tests/test_model_repository.py checks them).
configs: setup
	$(PY) -m export.model_repository configs

dev-repository: setup
	rm -rf $(DEV_REPOSITORY)
	$(PY) -m export.model_repository dev $(DEV_REPOSITORY)

dev-serve: dev-repository
	MODEL_REPOSITORY=$(DEV_REPOSITORY) HTTP_PORT=$(DEV_HTTP_PORT) GRPC_PORT=$(DEV_GRPC_PORT) \
		METRICS_PORT=$(DEV_METRICS_PORT) $(PY) -m server.launch

demo: setup
	$(PY) -m scripts.demo samples/garbage12

test: setup
	$(PY) -m pytest -q

reliability: setup
	$(PY) -m pytest -q tests/test_bad_inputs.py tests/test_overload.py tests/test_faults.py

audit: setup
	$(PY) -m training audit ../shared/data/garbage12 --out training/splits/garbage12_audit.json --md training/splits/garbage12_audit.md

split: setup
	$(PY) -m training split ../shared/data/garbage12 --seed 42 --out training/splits/garbage12_seed42.csv

train: setup
	$(PY) -m training train --config training/configs/$(NAME).toml

export: setup
	$(PY) -m export $(RUN) --name $(NAME) --int8

# The version Triton serves (the highest), not version 1.
evaluate: setup
	$(PY) -m training evaluate $$($(PY) -m export.model_repository latest $(NAME)) --out $(RUN)/eval

# Row 1v (ONNX Runtime + OpenVINO provider) needs its own venv (docs/PERFORMANCE.md); without PyPI
# the row is skipped, not the benchmark.
bench: setup
	-scripts/ort_openvino_venv.sh .venv-ort-openvino
	$(PY) -m benchmarks.scorer_defaults
	$(PY) -m benchmarks.run $(if $(MODEL),--model $(MODEL))

loadtest: setup
	$(PY) -m load_tests.run --users $(or $(USERS),8) --duration $(or $(DURATION),30s) $(if $(URL),--url $(URL)) $(if $(HTTP_URL),--http-url $(HTTP_URL)) $(if $(SCENARIO),--scenario $(SCENARIO))

# DEV=1: `make dev-serve` in the background (stopped with the app) and the app on its `dev` model.
ifdef DEV
app: dev-repository
	MODEL_REPOSITORY=$(DEV_REPOSITORY) HTTP_PORT=$(DEV_HTTP_PORT) GRPC_PORT=$(DEV_GRPC_PORT) \
		METRICS_PORT=$(DEV_METRICS_PORT) $(PY) -m server.launch & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	$(PY) -m app.run --server-url 127.0.0.1:$(DEV_HTTP_PORT) --protocol http --model dev --wait 120
else
app: setup
	$(PY) -m app.run $(if $(URL),--server-url $(URL))
endif

clean:
	rm -rf $(VENV) .pytest_cache artifacts
