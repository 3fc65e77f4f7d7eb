# The two first commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/etbridge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/etbridge
	@bash scripts/ensure-redis

demo: setup
	$(BIN)/etbridge demo $(ARGS)

lint: setup
	$(BIN)/ruff check etbridge tests bench
	$(BIN)/ruff format --check etbridge tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(ARGS)

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
