# Two commands for a fresh machine: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test sync bench install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/fastai-repro demo

# The package and README.md must be what the notebooks generate; then notebook tests, then training tests.
sync: install
	PATH=$(abspath $(BIN)):$$PATH sh .ci/check-sync

test: sync
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/overhead.py
