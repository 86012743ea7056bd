# All set-up lives here: `make demo` and `make test` work on a fresh Debian machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REF     := $(VENV)/.reference
OFA_REF := ofa==0.1.0.post202307202001

FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: venv reference datasets test demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The official package, a reference to compare against in tests and benches only (never imported by src/).
reference: $(REF)

$(REF): $(STAMP)
	$(BIN)/pip install -q --no-deps $(OFA_REF)
	touch $@

# Debian's Fashion-MNIST (IDX files under $(FMNIST)): real data for the tests and recipes.
datasets:
	@test -d $(FMNIST) || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }

# Passive OpenMP waits: torch's threads sleep instead of spinning when other jobs share the cores.
test: venv reference datasets
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest

demo: venv datasets
	$(BIN)/ofa demo

bench: venv reference
	$(BIN)/python bench/supernet_speed.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/allocator.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
