# Two entry points for a new user (see README):  make run   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast lint flow bench clean-outputs seeds

# Create the virtual environment and install the pinned dependencies (once; again when they change).
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The main job: the whole DAG on the embedded toy dataset.
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# N training seeds (params.yaml's seed = 0..N-1) as queued DVC experiments, then every figure's mean +- std over
# them in reports/seeds.md (.csv, .json). SET="-S aream.enabled=false" gives every seed that setting too.
N   ?= 3
SET ?=
seeds: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.tools.compare seeds $(N) $(SET)

# Unit tests plus the smoke-profile integration test of the whole DAG.
test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# ruff (configured in pyproject.toml): pyflakes, pycodestyle, blind excepts, bugbear, pyupgrade.
lint: setup
	$(BIN)/ruff check .

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

# The same DAG as a Prefect flow (temporary local Prefect server unless PREFECT_API_URL is set).
flow: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.tools.flow

bench: setup
	for b in benchmarks/bench_*.py; do [ "$$b" = benchmarks/bench_scale.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done  # bench_scale: hours, run it by hand

# GPU check, one command, under 8 minutes on one GPU: images/s and peak GPU memory of every network at the VOC
# profile's sizes, then the smoke DAG on CUDA (benchmarks/gpu_check.sh). Uses .venv when present, else python3;
# without a CUDA device it says so and exits 0. Options: make gpu-check ARGS="--skip-dag".
.PHONY: gpu-check
gpu-check:
	bash benchmarks/gpu_check.sh $(ARGS)
