# The README's two commands: `make demo` (main job) and `make test` (CI).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pdcore-setup
DEPS   := scripts/setup.sh pyproject.toml $(wildcard plugins/*/pyproject.toml)

.PHONY: setup test lint demo clean wheels

setup: $(STAMP)

$(STAMP): $(DEPS)
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/pdcore plugins
	$(PY) scripts/demo.py

# Wheels of pdcore and the five first-party plugins, built offline into dist/.
wheels: setup
	PYTHON=$(PY) bash scripts/build_wheels.sh dist

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
