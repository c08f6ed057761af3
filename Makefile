# signstream: `make demo` runs the whole pipeline on the synthetic corpus,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench bench-compare lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# the tests, then the linter and the formatter's check (CI runs this target)
test: setup
	$(PY) -m pytest -q --durations=15
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m signstream.tools.demo --out runs/demo

bench: setup
	$(PY) -m signstream.benchmarks.run_all --out benchmarks/results

# the latest `make bench` against the previous run on this machine (exit 1 on a regression)
bench-compare: setup
	$(VENV)/bin/signstream bench compare --history benchmarks/history.jsonl

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf runs .pytest_cache
