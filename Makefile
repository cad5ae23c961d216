# kerasport — `make all` runs the whole pipeline on the built-in dataset; `make test` runs the test suite.
# Both set themselves up first (a .venv in the repository root, re-installed only when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= build

# Options passed through to `kerasport train` / `kerasport run`, e.g. `make all EPOCHS=5 ARCH=edge`.
DATA   ?=
EPOCHS ?=
ARCH   ?=
SEED   ?=
WIDTH  ?=
LIMIT  ?=
TRAIN_ARGS ?=
EXPORT_ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each takes whole files (--dist loadfile), so a file's module fixtures are built once.
TEST_WORKERS ?= auto

TRAIN_OPTS := --run $(RUN) \
	$(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(ARCH),--arch $(ARCH)) \
	$(if $(SEED),--seed $(SEED)) $(if $(WIDTH),--width $(WIDTH)) $(if $(LIMIT),--limit $(LIMIT)) $(TRAIN_ARGS)

.PHONY: install all train export parity verify test test-fast lint bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

all: install
	$(BIN)/kerasport run $(TRAIN_OPTS) $(EXPORT_ARGS)

train: install
	$(BIN)/kerasport train $(TRAIN_OPTS)

export: install
	$(BIN)/kerasport export --run $(RUN) $(EXPORT_ARGS)

parity: install
	$(BIN)/kerasport parity --run $(RUN)

verify: install
	$(BIN)/kerasport bundle verify --run $(RUN)

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

# The documentation site into site/ (the CLI reference is generated from the typer app at every build).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: install
	$(BIN)/python bench/train.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/imported.py

clean:
	rm -rf $(RUN) site .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
