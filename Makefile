# foreman — two commands matter: `make run` and `make test`.

# The first Python >= 3.11 on PATH (macOS's own python3 may be older).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
VENV ?= .venv
BIN := $(VENV)/bin
# A path-based editable install: twistd finds plugins by scanning sys.path
# for twisted/plugins, which an import-hook editable install would hide.
EDITABLE := --config-settings editable_mode=compat
RUN_ARGS ?= --upstream auto

.PHONY: run test install install-test lint typecheck pytest fuzz bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "foreman needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet $(EDITABLE) -e .
	@# Regenerate twistd's plugin cache as the installing user.
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.cfg
	$(BIN)/pip install --quiet $(EDITABLE) -e '.[test]'
	@touch $@

# The official JavaScript client, for tests/test_js_client.py (skipped without Node).
JS_CLIENT := tests/js/node_modules/.installed
$(JS_CLIENT): tests/js/package.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/js && npm install --no-package-lock --no-audit --no-fund --silent \
		&& touch node_modules/.installed \
		|| echo "npm install failed: the JavaScript client test will be skipped"; \
	else echo "npm not found: the JavaScript client test will be skipped"; fi

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test $(JS_CLIENT)

## Start foreman in the foreground: the Ollama at FOREMAN_OLLAMA_URL, or the
## built-in simulated Ollama when none answers.
run: install
	$(BIN)/twistd --nodaemon --pidfile= foreman $(RUN_ARGS)

## Lint, type-check and run every test.
test: install-test lint typecheck pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install-test
	$(BIN)/mypy

pytest: install-test
	$(BIN)/pytest

## A long property-based fuzz of every route and dialect (tests/test_fuzz_http.py;
## `make test` runs a short, repeatable one). FUZZ_ARGS go to pytest, e.g.
## FUZZ_ARGS=--hypothesis-seed=7; failures are kept in .hypothesis/ and replayed first.
fuzz: install-test
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -p no:cacheprovider tests/test_fuzz_http.py $(FUZZ_ARGS)

## Run every benchmark; tables (and a chart, with matplotlib) in bench/results/.
bench: install-test
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/js/node_modules
	find . -name dropin.cache -delete
