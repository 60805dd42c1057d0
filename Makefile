# The two commands in the README: `make demo` and `make test`. Both set up .venv/ first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The suite runs on JOBS pytest workers (pytest-xdist), each taking whole test files (--dist loadfile keeps a
# file's module fixtures, a trained model or a Ray cluster, in one worker). JOBS=0 runs it in one process.
JOBS ?= 2

# No telemetry and no network probes from the libraries during the demo and the tests (offline machines,
# CI). Users with a network can drop these; nothing in Sentinel depends on them.
export YOLO_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_AUTH_MODE ?= disabled
export FIFTYONE_DO_NOT_TRACK ?= true

.PHONY: setup demo test test-fast lint format bench

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) train.py experiment=demo mode=all

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/tracking.py
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/tune.py
	$(PY) benchmarks/finetune.py
	$(PY) benchmarks/gpu_packing.py
	$(PY) benchmarks/balance.py
	$(PY) benchmarks/predict.py
