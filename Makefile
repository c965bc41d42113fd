# Two commands do everything on a fresh clone (Python 3.11, 2 CPU cores, no GPU):
#   make run   — set up .venv and run the headline experiment (GAGPO vs GiGPO vs GRPO on KeyDoor) under runs/
#   make test  — set up .venv and run the whole test suite, every notebook under nbval included
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FULL_STAMP := $(VENV)/.installed-full
NOTEBOOKS := $(wildcard chapters/*.ipynb chapters/solutions/*.ipynb)

.PHONY: run test setup bench clean

setup: $(STAMP)

# torch==2.13.0 first when torch is absent: a bare `torch` requirement would pull a multi-GB CUDA build
# on CPU machines; the package's own range (torch>=2.4,<3) is then already satisfied.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[book,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# the test suite also needs the language-model and ALFWorld extras; alfworld builds native code whose build
# scripts call a bare `python`, so the venv goes first on PATH
$(FULL_STAMP): $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pip install -q -e ".[book,dev,lm,alfworld]"
	touch $(FULL_STAMP)

# writes under runs/headline/ (ignored by git) and prints the table next to the committed figures/headline_keydoor.md;
# `python -m gagpo headline` without --figures-dir refreshes the committed figures/headline_keydoor.*
run: $(STAMP)
	$(BIN)/python -m gagpo headline --figures-dir runs/headline/figures

# GAGPO_SAVE_DIR: the chapters save their figures into a temporary folder, so a test run leaves figures/ as committed
test: $(FULL_STAMP)
	GAGPO_SAVE_DIR=$$(mktemp -d) MPLBACKEND=Agg $(BIN)/python -m pytest -n 2 --dist loadfile tests $(if $(NOTEBOOKS),--nbval-lax $(NOTEBOOKS))

bench: $(STAMP)
	$(BIN)/python -m gagpo bench throughput

clean:
	rm -rf $(VENV) runs .pytest_cache
