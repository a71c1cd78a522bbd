# Two commands a new user needs:  `make study` (the default study) and `make test`.
# Both create .venv and install the locked dependencies and the package first.
VENV   := .venv
PYTHON := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# `make lock` runs pip-tools from its own small venv, so the project's venv holds only the lock.
LOCK_VENV  := .venv-lock
LOCK_TOOLS := pip==26.3 pip-tools==7.6.2
# LOCK_FLAGS=--upgrade make lock: re-resolve every package, not only what requirements.txt changed
LOCK_FLAGS :=

.PHONY: venv venv-litert lock lock-litert study dvc-study test test-fast faults lint report-html docs gpu-wheels clean

venv: $(VENV)/.installed

# Every package, pip and setuptools included, at the version and sha256 of requirements.lock.
# The interpreter's own pip installs the lock (upgrading itself to the locked pip); the package
# is then built with the locked setuptools, without fetching anything.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --require-hashes -r requirements.lock
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## requirements.lock from requirements.txt: exact versions and hashes of every dependency
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { python3 -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet $(LOCK_TOOLS); }
	$(LOCK_VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and \
	  "make lock: resolve with Python 3.11, the Python of make venv")'
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) \
	  --output-file requirements.lock requirements.txt

## LiteRT's PyTorch converter (the litert peer) in .venv-litert, a venv over .venv: it sees .venv's
## packages (a .pth adding .venv's site-packages after its own) and holds only what
## requirements-litert.lock has at other versions than requirements.lock (scripts/lock_overlay.py)
LITERT_VENV := .venv-litert
venv-litert: $(LITERT_VENV)/.installed

$(LITERT_VENV)/.installed: $(VENV)/.installed requirements-litert.lock
	test -x $(LITERT_VENV)/bin/python || python3 -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -c 'import site, sys; base = sys.argv[1]; \
	  open(site.getsitepackages()[0] + "/zz-quantdet-venv.pth", "w").write(f"import site; site.addsitedir({base!r})\n")' \
	  "$$($(PYTHON) -c 'import site; print(site.getsitepackages()[0])')"
	$(PYTHON) scripts/lock_overlay.py requirements.lock requirements-litert.lock > $(LITERT_VENV)/overlay.lock
	$(LITERT_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(LITERT_VENV)/overlay.lock
	touch $@

## requirements-litert.lock from requirements-litert.txt, every package .venv also has held at
## requirements.lock's version but typing-extensions and the pydantic and anyio that need it newer (the conflict)
lock-litert: venv
	test -x $(LOCK_VENV)/bin/pip-compile || { python3 -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet $(LOCK_TOOLS); }
	$(PYTHON) scripts/lock_overlay.py requirements.lock --constraints typing-extensions pydantic pydantic-core typing-inspection anyio > $(LOCK_VENV)/constraints.txt
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) --constraint $(LOCK_VENV)/constraints.txt \
	  --output-file requirements-litert.lock requirements-litert.txt

## the default study, end to end, with Snakemake on every core
study: venv
	snakemake --cores all

## the same study with DVC
dvc-study: venv
	dvc repro

## the whole test suite, including the smoke study through Snakemake, on two processes
## (pytest-xdist: one test file at a time each; tests/conftest.py orders the long files first)
PYTEST_WORKERS := 2
test: venv venv-litert
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

## unit tests only
test-fast: venv
	$(PYTHON) -m pytest -q -m "not slow"

lint: venv
	snakemake --lint

## the fault campaign: the smoke study killed 20 times through Snakemake and through DVC, its
## tracking server stopped, its disk filled, its files damaged; a table of what survived
faults: venv
	$(PYTHON) scripts/fault_campaign.py --work $(or $(FAULTS_DIR),/tmp/quantdet-faults) --kills 20

## HTML report of the last study (plots, tables, provenance)
report-html: venv
	snakemake --report results/report.html

## the documentation site in site/: reference pages generated from the code, then a strict build
## (a broken link or anchor, or a page outside the nav, fails it)
docs: venv
	$(PYTHON) scripts/gen_docs.py --out docs/reference
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

## wheels for the GPU check (tests/gpu/README.md): what the GPU machine's Python 3.12 lacks
gpu-wheels: venv
	$(PYTHON) tests/gpu/gpu_check.py wheels --out tests/gpu/wheels

clean:
	rm -rf data results logs benchmarks .snakemake mlflow.db mlflow.lock mlruns mlartifacts site
