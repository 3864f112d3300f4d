# mbo_lab developer tasks.  `make help` lists them.
#
#   make demo    set up the user venv (if needed) and start JupyterLab on the dashboard notebook
#   make test    set up the test venv (if needed) and run tests/ plus notebooks/ (nbval)
#   make lock    re-resolve both lock files and binder/constraints.txt (py3.11, linux)
#   make sbom    write a CycloneDX SBOM of the venv to sbom.json
#
# Two lock files: requirements-user.txt (the package with its `lab` and `batch` extras:
# what the notebooks need, no test tools) for `make demo`, and requirements-lock.txt (the
# same pins plus the `test` extra) for `make test` and CI.
#
# Variables (override on the command line, e.g. `make test VENV=/tmp/v PYTEST_ARGS=-x`):
#   PYTHON, VENV, LOCK, USER_LOCK, UV_VERSION, NUMBA_CACHE_DIR, PYTEST_ARGS, PYTEST_TIMEOUT,
#   DEMO_ARGS (e.g. DEMO_ARGS='FILE.dbn --port 8890 --no-browser')

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON      ?= python3
VENV        ?= .venv
LOCK        ?= requirements-lock.txt
USER_LOCK   ?= requirements-user.txt
BINDER_CONSTRAINTS := binder/constraints.txt
UV_VERSION  ?= 0.13.9
LOCK_PYTHON := 3.11
LOCK_PLATFORM := linux

VPY := $(VENV)/bin/python
UV  := $(VENV)/bin/uv
UV_PIP := $(UV) pip install --python $(VPY) --quiet

# uv never fetches its own Python, copies files (the cache may be on another disk).
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
# Bytecode is compiled once at setup. Without .pyc files every process compiles pandas,
# numba and pyarrow from source at import, and where PYTHONDONTWRITEBYTECODE=1 is set (as
# on this project's VMs) Python never caches them: `import pandas, numba` measured 1.97 s
# that way and 0.46 s compiled; import + first bbo(load(CLX5)) 2.4 s -> 0.7-0.8 s.
export UV_COMPILE_BYTECODE := 1
SETUP_REV := bytecode-1
COMPILE_VENV = $(VPY) -m compileall -q -j 0 --invalidation-mode timestamp $(VENV)/lib >/dev/null 2>&1 || true
# Playwright drives Debian's /usr/bin/chromium: never download a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# The stamp is keyed on the lock file and pyproject.toml (entry points, package data):
# a new lock or project metadata means a new stamp name, so setup runs again.
SETUP_SHA := $(shell { echo $(SETUP_REV); cat $(LOCK) pyproject.toml; } 2>/dev/null | sha256sum | cut -c1-16)
STAMP     := $(VENV)/.lock-$(SETUP_SHA)
USER_SHA   := $(shell { echo $(SETUP_REV); cat $(USER_LOCK) pyproject.toml; } 2>/dev/null | sha256sum | cut -c1-16)
USER_STAMP := $(VENV)/.user-$(USER_SHA)

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

.PHONY: help setup setup-user demo test lock lock-upgrade sbom lint clean clean-notebooks \
	check-notebooks notebook-filter print-%

help:
	@echo "make demo          set up $(VENV) from $(USER_LOCK) if needed, start JupyterLab on notebooks/02_dashboard.ipynb"
	@echo "make test          set up $(VENV) from $(LOCK) if needed, run pytest over tests/ and notebooks/ (nbval)"
	@echo "make setup         only set up the test env $(VENV) (python -m venv, uv==$(UV_VERSION), $(LOCK), -e . --no-deps)"
	@echo "make setup-user    only set up the user env $(VENV) from $(USER_LOCK) (no test tools)"
	@echo "make lock          re-resolve $(LOCK) (.[test,lab,batch]), $(USER_LOCK) (.[lab,batch]) and $(BINDER_CONSTRAINTS) (keeps pins)"
	@echo "make lock-upgrade  same, upgrading every pin to the newest allowed version"
	@echo "make clean-notebooks  strip outputs, widget state and run metadata from notebooks/ (nbval markers -> tags)"
	@echo "make check-notebooks  list notebooks that are not clean (exit 1)"
	@echo "make notebook-filter  install a git clean filter in this clone: runs leave no git diff"
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
	@# a venv set up before UV_COMPILE_BYTECODE: compile what it lacks (a few files of
	@# test data in some packages are not valid Python: their errors are ignored)
	@$(COMPILE_VENV)
	@rm -f $(VENV)/.lock-*
	@touch $@

setup: $(STAMP)

# The user env: the same pins as $(LOCK) without the test tools. `make test` later installs
# $(LOCK) on top of it (same versions, plus the test extra).
$(USER_STAMP): $(USER_LOCK) pyproject.toml | $(UV)
	@echo "==> installing $(USER_LOCK) into $(VENV)"
	@$(UV) --version | grep -qF 'uv $(UV_VERSION)' || $(VPY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV_PIP) -r $(USER_LOCK)
	$(UV_PIP) --no-deps -e .
	@$(COMPILE_VENV)
	@rm -f $(VENV)/.user-*
	@touch $@

setup-user: $(USER_STAMP)

# --- tasks -----------------------------------------------------------------------

# JupyterLab from $(VENV) with the dashboard notebook open; prints the URL (with token).
demo: setup-user
	@mkdir -p "$(NUMBA_CACHE_DIR)"
	$(VPY) -m mbo_lab.launch $(DEMO_ARGS)

test: setup
	@mkdir -p "$(NUMBA_CACHE_DIR)"
	@find "$(NUMBA_CACHE_ROOT)" -mindepth 1 -maxdepth 1 -type d ! -name '$(SRC_SHA)' -exec rm -rf {} + 2>/dev/null || true
	$(VPY) -m pytest tests $(NB_ARGS) -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

# The user lock is resolved under the test lock's pins (-c), so it is a subset of it; Binder
# installs under the user lock's pins (binder/constraints.txt).
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test --extra lab --extra batch \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
		$(LOCK_ARGS) -o $(LOCK)
	$(UV) pip compile pyproject.toml --extra lab --extra batch -c $(LOCK) \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
		-o $(USER_LOCK)
	@{ echo "# pip constraints for Binder (binder/environment.yml: -c constraints.txt):"; \
	   echo "# the pins of $(USER_LOCK), which CI tests. Generated by 'make lock'; do not edit."; \
	   grep -E '^[A-Za-z0-9]' $(USER_LOCK); } > $(BINDER_CONSTRAINTS)
	@echo "wrote $(LOCK), $(USER_LOCK), $(BINDER_CONSTRAINTS)"

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

# Committed notebooks carry no outputs, no widget state and only the metadata a run writes
# (mbo_lab.launch.clean_notebook; tests/test_notebook_hygiene.py checks them).
clean-notebooks: setup-user
	$(VPY) -m mbo_lab.launch --clean-notebooks $(NOTEBOOKS)

check-notebooks: setup-user
	$(VPY) -m mbo_lab.launch --clean-notebooks --check $(NOTEBOOKS)

# Optional, once per clone (after `make demo` or `make test`): a git clean filter, so a
# notebook run and saved in JupyterLab (outputs, widget state) shows no `git diff` and is
# committed clean. Local git config only (.git/config, .git/info/attributes).
NB_REPO ?= .
notebook-filter:
	git -C $(NB_REPO) config filter.mbo-notebook.clean '$(abspath $(VPY)) -m mbo_lab.launch --clean-notebooks -'
	git -C $(NB_REPO) config filter.mbo-notebook.smudge cat
	@attrs="$$(cd $(NB_REPO) && realpath -m "$$(git rev-parse --git-path info/attributes)")"; \
	mkdir -p "$$(dirname "$$attrs")"; \
	grep -qxF '*.ipynb filter=mbo-notebook' "$$attrs" 2>/dev/null \
		|| echo '*.ipynb filter=mbo-notebook' >> "$$attrs"; \
	echo "notebooks in $(NB_REPO) are cleaned by git (filter mbo-notebook, $$attrs)"

# `make print-STAMP` etc.: show a variable (used by tests/test_packaging.py).
print-%:
	@echo '$($*)'
