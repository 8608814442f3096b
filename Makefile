# Heat Steward: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make run HOST=0.0.0.0 PORT=8080` overrides; otherwise `steward serve` takes STEWARD_HOST/STEWARD_PORT from the
# environment or .env (default 127.0.0.1:8000), as every other setting. Only HOST=/PORT= on make's command line
# count: make takes every environment variable as a variable too, and hosting platforms export PORT (tcsh sets
# HOST) for other purposes, which silently overrode STEWARD_PORT/STEWARD_HOST.
given = $(if $(filter command line,$(origin $(1))),$($(1)))
serve_args = $(if $(call given,HOST),--host $(HOST)) $(if $(call given,PORT),--port $(PORT))
# The suite runs on PYTEST_WORKERS processes (pytest-xdist; 0 = one process), a test file on one process at a
# time so its module fixtures are made once. The slowest tests are listed at the end of every run, so a suite
# that creeps towards CI's time limit shows where.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?= --durations=20 -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: run test lint pytest migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps make reinstalling cheap: a change to pyproject.toml reinstalls, nothing else does.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/steward db upgrade
	$(BIN)/steward serve $(serve_args)

migrate: $(VENV)/.installed
	$(BIN)/steward db upgrade

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check api sync speech video tests
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
