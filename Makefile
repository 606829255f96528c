# Set-up and the two commands of the README. The venv is rebuilt when pyproject.toml changes.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	# Pinned first so no dependency pulls a CUDA build of torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/accllm demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''
