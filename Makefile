# Two commands: `make test` and `make demo`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint docs bench e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The README's configuration reference, generated from the declarations in gateway/options.py.
docs: $(STAMP)
	GATEWAY_UPDATE_DOCS=1 $(BIN)/pytest -q tests/test_options.py -k readme

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
