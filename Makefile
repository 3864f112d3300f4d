# mbo_lab developer tasks.  `make help` lists them.
#
#   make demo    set up the venv (if needed) and print a book summary of the demo data
#   make test    set up the venv (if needed) and run tests/ plus notebooks/ (nbval)
#   make lock    re-resolve requirements-lock.txt from pyproject.toml (.[test,lab], py3.11, linux)
#   make sbom    write a CycloneDX SBOM of the venv to sbom.json
#
# Variables (override on the command line, e.g. `make test VENV=/tmp/v PYTEST_ARGS=-x`):
#   PYTHON, VENV, LOCK, UV_VERSION, NUMBA_CACHE_DIR, PYTEST_ARGS, PYTEST_TIMEOUT, DEMO_ARGS

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON      ?= python3
VENV        ?= .venv
LOCK        ?= requirements-lock.txt
UV_VERSION  ?= 0.13.9
LOCK_PYTHON := 3.11
LOCK_PLATFORM := linux

VPY := $(VENV)/bin/python
UV  := $(VENV)/bin/uv
UV_PIP := $(UV) pip install --python $(VPY) --quiet

# uv never fetches its own Python, copies files (the cache may be on another disk).
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
# Playwright drives Debian's /usr/bin/chromium: never download a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# The stamp is keyed on the lock file and pyproject.toml (entry points, package data):
# a new lock or project metadata means a new stamp name, so setup runs again.
SETUP_SHA := $(shell cat $(LOCK) pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
STAMP     := $(VENV)/.lock-$(SETUP_SHA)

# numba's cache=True only tracks the defining file, so key the cache folder on a
# hash of the whole package source: any edit to mbo_lab/ starts a fresh cache.
NUMBA_CACHE_ROOT := $(CURDIR)/.numba_cache
SRC_SHA := $(shell find mbo_lab -name '*.py' -type f 2>/dev/null | LC_ALL=C sort | xargs cat 2>/dev/null | sha256sum | cut -c1-12)
NUMBA_CACHE_DIR ?= $(NUMBA_CACHE_ROOT)/$(SRC_SHA)
export NUMBA_CACHE_DIR

# nbval: pytest only collects .ipynb files with an --nbval flag, and only pass the
# folder when it holds notebooks.
NOTEBOOKS := $(shell find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' 2>/dev/null)
NB_ARGS   := $(if $(NOTEBOOKS),notebooks --nbval-lax --nbval-current-env)
PYTEST_TIMEOUT ?= 900
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help setup demo test lock lock-upgrade sbom lint clean print-%

help:
	@echo "make demo          set up $(VENV) from $(LOCK) if needed, run 'mbo-lab demo'"
	@echo "make test          set up $(VENV) if needed, run pytest over tests/ and notebooks/ (nbval)"
	@echo "make setup         only set up $(VENV) (python -m venv, uv==$(UV_VERSION), $(LOCK), -e . --no-deps)"
	@echo "make lock          re-resolve $(LOCK) for .[test,lab] on Python $(LOCK_PYTHON)/$(LOCK_PLATFORM) (keeps pins)"
	@echo "make lock-upgrade  same, upgrading every pin to the newest allowed version"
	@echo "make sbom          write a CycloneDX SBOM of $(VENV) to sbom.json"
	@echo "make lint          ruff check ."
	@echo "make clean         remove .numba_cache, sbom.json, test-output"

# --- environment -----------------------------------------------------------------

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(UV): | $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(LOCK) pyproject.toml | $(UV)
	@echo "==> installing $(LOCK) into $(VENV)"
	@$(UV) --version | grep -qF 'uv $(UV_VERSION)' || $(VPY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV_PIP) -r $(LOCK)
	$(UV_PIP) --no-deps -e .
	@rm -f $(VENV)/.lock-*
	@touch $@

setup: $(STAMP)

# --- tasks -----------------------------------------------------------------------

demo: setup
	@mkdir -p "$(NUMBA_CACHE_DIR)"
	$(VENV)/bin/mbo-lab demo $(DEMO_ARGS)

test: setup
	@mkdir -p "$(NUMBA_CACHE_DIR)"
	@find "$(NUMBA_CACHE_ROOT)" -mindepth 1 -maxdepth 1 -type d ! -name '$(SRC_SHA)' -exec rm -rf {} + 2>/dev/null || true
	$(VPY) -m pytest tests $(NB_ARGS) -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test --extra lab \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
		$(LOCK_ARGS) -o $(LOCK)

lock-upgrade: LOCK_ARGS := --upgrade
lock-upgrade: lock

sbom: setup
	$(VENV)/bin/cyclonedx-py environment $(VPY) --pyproject pyproject.toml \
		--output-reproducible --of JSON -o sbom.json
	@echo "wrote sbom.json"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf .numba_cache sbom.json test-output

# `make print-STAMP` etc.: show a variable (used by tests/test_packaging.py).
print-%:
	@echo '$($*)'
