# Two commands for a fresh machine: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test sync bench install docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/fastai-repro demo

# The package and README.md must be what the notebooks generate; then the tests, two at a time (pytest-xdist on this
# machine's 2 cores), among them every notebook executed and its saved outputs compared (tests/test_docs_notebooks.py,
# which runs nbcheck). Tests that share a module fixture stay on one worker (tests/conftest.py). OpenMP's idle threads
# sleep instead of spinning (OMP_WAIT_POLICY, which changes no number), so that they leave the CPU to the other worker.
sync: install
	PATH=$(abspath $(BIN)):$$PATH sh .ci/check-sync

test: sync
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -n 2 --durations=25

bench: install
	$(BIN)/python bench/overhead.py

# Optional: the docs site in _docs/, from the notebooks' stored outputs (nothing is executed again): docs/build.py
# renders them with Sphinx and myst-nb (the `docs` extra; Quarto, which nbdev-docs needs, does not install here).
# `$(BIN)/python docs/check_site.py` checks every page and screenshots two in Chromium (apt-get install -y chromium).
docs: $(VENV)/.installed-docs
	$(BIN)/python docs/build.py

$(VENV)/.installed-docs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $@
