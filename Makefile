# The README's two commands: `make demo` (main job) and `make test` (CI).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pdcore-setup
CHROMIUM_STAMP := $(VENV)/.chromium-setup
DEPS   := scripts/setup.sh scripts/setup_steps.sh pyproject.toml \
          $(wildcard plugins/*/pyproject.toml)

.PHONY: setup setup-test test lint demo clean wheels

setup: $(STAMP)

$(STAMP): $(DEPS)
	@VENV=$(VENV) bash scripts/setup.sh
	@touch $@

# What only the tests need on top of `setup`: the dashboard test's browser (one try;
# `make clean` forgets it).
setup-test: setup $(CHROMIUM_STAMP)

$(CHROMIUM_STAMP): scripts/setup_chromium.sh | $(STAMP)
	@VENV=$(VENV) bash scripts/setup_chromium.sh
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup-test lint
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/pdcore plugins
	$(PY) scripts/demo.py

# Wheels of pdcore and the five first-party plugins, built offline into dist/.
wheels: setup
	PYTHON=$(PY) bash scripts/build_wheels.sh dist

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
