# The two commands of the README. Each creates .venv/ and installs everything on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint mutation clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned, so nothing later pulls another build
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The rules call `python -m ied`, so the venv goes first on PATH (as `source .venv/bin/activate` does).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

run: $(STAMP)  ## the whole chain on the embedded digits dataset
	snakemake --cores 2

test: $(STAMP)  ## every test, the slow end-to-end ones included (two pytest-xdist workers: pyproject's addopts)
	$(PYTHON) -m pytest

lint: $(STAMP)
	snakemake --lint

# Mutation testing of the core modules against their fast tests (not in CI; tests/README.md has the scores).
mutation: $(STAMP)
	$(PYTHON) -m pip install -q mutmut==3.8.1
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2 > mutants.log 2>&1 || true
	$(PYTHON) scripts/mutation_scores.py

clean:
	rm -rf results/digits-default .snakemake mutants mutants.log
