# Two commands: `make test` and `make demo`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-pure demo lint docs lock bench e2e clean

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

# The whole suite runs the rewriter's tests with both scanners (compiled and pure Python);
# the second pass runs the rewriter-related files again as a machine without a compiler
# would, with GATEWAY_NO_EXTENSIONS=1: the pure-Python scanner selected at import.
PURE_PYTHON_TESTS := tests/test_rewriter.py tests/test_rewriter_corpus.py tests/test_body.py \
	tests/test_speedups.py tests/test_extension.py

test: lint
	$(BIN)/pytest -q
	GATEWAY_NO_EXTENSIONS=1 $(BIN)/pytest -q $(PURE_PYTHON_TESTS)

test-pure: $(STAMP)
	GATEWAY_NO_EXTENSIONS=1 $(BIN)/pytest -q $(PURE_PYTHON_TESTS)

# The README's configuration reference, generated from the declarations in gateway/options.py.
docs: $(STAMP)
	GATEWAY_UPDATE_DOCS=1 $(BIN)/pytest -q tests/test_options.py -k readme

# requirements.lock: what the image installs, every version exact and every file hashed (see
# deploy/README.md). Run after changing the dependencies in pyproject.toml, with Python 3.11,
# the image's: markers such as python_version are resolved for the Python that runs this.
lock: $(STAMP)
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-build-deps --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file=requirements.lock pyproject.toml

demo: $(STAMP)
	$(BIN)/python -m gateway demo

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/proxy.py --identity
	$(BIN)/python bench/rewrite.py
	$(BIN)/python bench/matching.py
	$(BIN)/python bench/tokens.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build gateway/html/_speedups*.so
