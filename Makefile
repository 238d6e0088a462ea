# Two commands: `make test` and `make demo`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench e2e clean

# setup.py builds the compiled scanner: a changed C source reinstalls (and rebuilds) it.
$(STAMP): pyproject.toml setup.py gateway/html/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench setup.py
	$(BIN)/ruff format --check gateway tests bench setup.py
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python -m gateway demo

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/proxy.py --identity
	$(BIN)/python bench/rewrite.py
	$(BIN)/python bench/tokens.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
