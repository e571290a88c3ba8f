# medae: two commands for a fresh machine, `make demo` and `make test`.
# Each runs `make install` first when .venv is missing.
#
# torch is installed before medae so that pip never resolves it on its own (an unpinned torch
# pulls the multi-GB CUDA build).  Choose your build with TORCH_SPEC / TORCH_PIP_ARGS, e.g.
#   make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"   # GPU
#   make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"     # CPU elsewhere
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# medae[brain] (pyproject.toml) is deepbet, whose wheel ships its brain-extraction networks
# (MIT).  It is installed here without its dependencies: its metadata asks for an unpinned
# torch, a GUI toolkit, pandas, tqdm and two LGPL helpers, none of which medae runs
# (medae/brain.py loads the networks with torch and uses SciPy).  DEEPBET_SPEC= (empty) leaves
# it out: raw heads are then refused, skull-stripped scans are scored as before.
DEEPBET_SPEC ?= deepbet==1.0.2
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test demo lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(if $(DEEPBET_SPEC),$(BIN)/pip install --no-deps "$(DEEPBET_SPEC)")
	$(BIN)/pip install -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(BIN)/medae demo --output demo_output/$$(date +%Y%m%d-%H%M%S)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
