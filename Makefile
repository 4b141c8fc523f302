# hwlm: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test test-fast setup clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or run: make PYTHON=python3 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_DEMO): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	@touch $@

$(STAMP_TEST): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	@touch $@ $(STAMP_DEMO)

setup: $(STAMP_DEMO)

demo: $(STAMP_DEMO)
	$(VENV)/bin/hwlm quickstart

test: $(STAMP_TEST)
	$(PY) -m pytest

test-fast: $(STAMP_TEST)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
