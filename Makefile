# Everything a fresh checkout needs: `make demo` runs the embedded default, `make test` the tests.
# Both create the virtual environment at .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint format bench screenshots clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hvadam demo

# Ruff, mypy on the four packages (pyproject's [tool.mypy]), and the layer contract
# hvadam <- search_spaces <- studies <- dashboards (pyproject's [tool.importlinter]);
# .pre-commit-config.yaml runs the same checks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# CPU benchmarks; each prints ratios against a peer measured in the same run.
bench: $(STAMP)
	$(PY) benchmarks/step_time.py --markdown
	$(PY) benchmarks/trial_overhead.py
	$(PY) benchmarks/workers_scaling.py
	$(PY) benchmarks/ray_vs_optuna.py
	$(PY) benchmarks/report_time.py

# README pictures, from a real small campaign in headless Chromium.
screenshots: $(STAMP)
	HVADAM_COMPILE=0 $(PY) -m dashboards.screenshots --out docs/img

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
