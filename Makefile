# Every target that needs the virtual environment creates it first, so on a fresh clone
# `make train` or `make test` works as the first and only command.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PORT    ?= 5000
ARGS    ?=
# The raw MIT-BIH folder: env ECG_MITDB_DIR, else the shared copy beside the repo when present
SHARED  ?= $(if $(ECG_SHARED_DATA),$(ECG_SHARED_DATA),$(abspath ../shared/data))
export ECG_MITDB_DIR ?= $(if $(wildcard $(SHARED)/mitdb/RECORDS),$(SHARED)/mitdb,)

.PHONY: install test test-all train ui lint bench docs docs-build

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

train: $(STAMP)
	$(PY) -m ecg_experiments.train $(ARGS)

# prints the address of the experiment's training runs, then serves the UI
ui: $(STAMP)
	@$(PY) -c "from ecg_experiments.tracking import ui_address; print('MLflow UI:', \
	  ui_address('sqlite:///$(CURDIR)/outputs/mlflow.db', 'ecg-experiments', port=$(PORT)))"
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
		--default-artifact-root $(CURDIR)/outputs/mlartifacts

# benchmarks (a table; outputs/bench/): `make bench ARGS=--quick` in about 2 minutes
bench: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

# ruff, then the layer contract of the package (.importlinter)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# the documentation site (mkdocs-material): `make docs` serves it, `make docs-build` checks it
docs: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:$(or $(DOCS_PORT),8000)

docs-build: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir outputs/site
