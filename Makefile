# fastdistill developer targets. `make test` and `make demo` work on a fresh clone with only
# python3 on PATH: the first run creates .venv, installs the pinned torch and the deps, and
# builds the C++/CUDA extension (CUDA when nvcc and a CUDA torch are present, CPU otherwise).
#
# The extension is compiled against the venv's torch, so the package is installed with
#   pip install --no-build-isolation -e .
# (an isolated build would compile against another torch). setup.py finds the CUDA toolkit
# (CUDA_HOME, else nvcc on PATH, else /usr/local/cuda*). A compiler error fails the target.
# Knobs (environment): FASTDISTILL_FORCE_CPU=1, FASTDISTILL_NO_EXTENSION=1,
# TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), MAX_JOBS, FASTDISTILL_BACKEND=reference|kernels.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEPS := setuptools wheel ninja numpy safetensors scikit-learn tqdm matplotlib \
        pytest pytest-benchmark ruff
DEPS_STAMP := $(VENV)/.deps.stamp
EXT_STAMP := $(VENV)/.fastdistill-install.stamp
CSRC := $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

# One line describing the extension and backend (printed before tests).
INFO_PY := import json, fastdistill.ops as e; \
  print('fastdistill backend_info:', json.dumps(e.backend_info()))
# Fails unless the extension loads (or was deliberately skipped with FASTDISTILL_NO_EXTENSION=1).
CHECK_PY := import os, fastdistill.ops as e; i = e.backend_info(); \
  print('fastdistill._C:', 'loaded, CUDA' if i['built_with_cuda'] else 'loaded, CPU only') \
  if i['extension_loaded'] else None; \
  raise SystemExit(0 if i['extension_loaded'] or os.environ.get('FASTDISTILL_NO_EXTENSION') \
  else 'fastdistill._C was built but does not load: ' + str(i['reason']))

.PHONY: setup test demo bench lint format build info clean distclean

setup: $(EXT_STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install $(TORCH_PINS)
	$(VPY) -m pip install $(DEPS)
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) setup.py $(CSRC)
	$(VPY) -m pip install --no-build-isolation -e '.[text,test,dev]'
	$(VPY) -c "$(CHECK_PY)"
	touch $@

test: setup
	@$(VPY) -c "$(INFO_PY)"
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/fastdistill distill --preset digits-lenet-fixed-10 --out runs/demo

bench: setup
	@$(VPY) -c "$(INFO_PY)"
	$(VPY) -m pytest benchmarks --benchmark-only -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .

# Rebuild the extension in place (incremental, ninja) after editing csrc/.
build: $(DEPS_STAMP)
	@if [ -f $(EXT_STAMP) ]; then \
	  $(VPY) setup.py build_ext --inplace && $(VPY) -c "$(CHECK_PY)" && touch $(EXT_STAMP); \
	else \
	  $(MAKE) $(EXT_STAMP); \
	fi

info: setup
	@$(VPY) -c "$(INFO_PY)"

clean:
	rm -rf build fastdistill/_C*.so *.egg-info $(EXT_STAMP)

distclean: clean
	rm -rf $(VENV)
