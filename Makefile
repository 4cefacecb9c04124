# Two commands: `make demo` (set up, then run the default recipe) and `make test` (set up, then the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	bash recipes/mini/run.sh

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check asr tests scripts recipes

bench: setup
	$(PY) scripts/benchmark.py all
