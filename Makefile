# One venv (.venv) for everything; the client also installs alone: pip install ./client
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
export HTTP_PORT GRPC_PORT METRICS_PORT
RUN ?= runs/effnet_lite0
NAME ?= effnet_lite0

.PHONY: setup serve demo test reliability train export evaluate audit split bench loadtest app clean

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

evaluate: setup
	$(PY) -m training evaluate model_repository/$(NAME)_classifier/1/model.onnx --out $(RUN)/eval

bench: setup
	$(PY) -m benchmarks.run $(if $(MODEL),--model $(MODEL))

loadtest: setup
	$(PY) -m load_tests.run --users $(or $(USERS),8) --duration $(or $(DURATION),30s) $(if $(URL),--url $(URL)) $(if $(HTTP_URL),--http-url $(HTTP_URL)) $(if $(SCENARIO),--scenario $(SCENARIO))

app: setup
	$(PY) -m app.run $(if $(URL),--server-url $(URL)) $(if $(DEV),--dev)

clean:
	rm -rf $(VENV) .pytest_cache artifacts
