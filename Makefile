# Two commands a new user needs:  `make study` (the default study) and `make test`.
# Both create .venv and install the pinned dependencies and the package first.
VENV   := .venv
PYTHON := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv study dvc-study test test-fast lint report-html clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

## the default study, end to end, with Snakemake on every core
study: venv
	snakemake --cores all

## the same study with DVC
dvc-study: venv
	dvc repro

## the whole test suite, including the smoke study through Snakemake (a few minutes)
test: venv
	$(PYTHON) -m pytest -q

## unit tests only
test-fast: venv
	$(PYTHON) -m pytest -q -m "not slow"

lint: venv
	snakemake --lint

## HTML report of the last study (plots, tables, provenance)
report-html: venv
	snakemake --report results/report.html

clean:
	rm -rf data results logs benchmarks .snakemake mlflow.db mlflow.lock mlruns mlartifacts
