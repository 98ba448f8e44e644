# Two commands do everything on a fresh machine with Python 3.10+ and make:
#   make demo   create .venv, install, score the bundled robot-tools sample
#   make test   create or update .venv, run the whole suite
#   make lint   ruff (the rules in pyproject.toml) and mypy on the package
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nll score sample_data/robot_tools.csv
	$(BIN)/nll plot sample_data/robot_tools.csv -o robot_tools.png
	@echo "The picture of the sample data is in $(CURDIR)/robot_tools.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# --no-cache: nothing written into the tree, and no stale result from an older run.
lint: $(STAMP)
	$(BIN)/ruff check --no-cache --config pyproject.toml nllcli
	$(BIN)/mypy --config-file pyproject.toml --no-incremental --cache-dir=/dev/null

# Byte-compile first, as a regular pip install does: start-up time is part of what is measured.
bench: $(STAMP)
	$(BIN)/python -m compileall -q nllcli
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_tokens.py
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_engines.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
