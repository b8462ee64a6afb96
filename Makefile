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

# The package and README.md must be what the notebooks generate; then every notebook executed and its saved outputs
# compared (nbcheck, which also fails on a cell that raises), then the training tests.
sync: install
	PATH=$(abspath $(BIN)):$$PATH sh .ci/check-sync

test: sync
	$(BIN)/fastai-repro nbcheck nbs --n-workers 2
	$(BIN)/python -m pytest -q --durations=20

bench: install
	$(BIN)/python bench/overhead.py
