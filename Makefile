# Each target creates .venv when it is missing and installs the project into it first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One BLAS/OpenMP thread: on 2-core machines a second thread made training and eigh 4-50x slower whenever
# another process was busy (benchmarks/RESULTS.md). Override with `make demo THREADS=2`.
THREADS ?= 1
# The fast tier runs in this many pytest processes (pytest-xdist), one BLAS thread each: 2 fits the 2-core machines
# (67-91 s on one such machine against 152 s in one process; 140-190 s on a slower one). The slow tier stays in one process: its tests start processes
# and time them.
TEST_JOBS ?= 2
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 OMP_NUM_THREADS=$(THREADS)

.PHONY: install demo test test-slow test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/masc-probe $(ARGS)

# Two tiers (tests/conftest.py decides which test is slow, by rule): the fast one has no processes, no real data
# and no long training; the slow one has the rest (subprocess CLI runs, torchrun, ../shared/data, the benchmarks).
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -n $(TEST_JOBS) --durations=15 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -m slow --durations=15 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_masc.py

clean:
	rm -rf $(VENV) build *.egg-info
