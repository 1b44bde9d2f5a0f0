# Two set-up commands: `make demo` (install + cluster the shipped sample) and
# `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/rayclust cluster data/sample --labels-from-folders --output runs/demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: install
	$(BIN)/ruff check rayclust tests benchmarks scripts

bench: install
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/kmeans.py
	$(BIN)/python benchmarks/knn.py
	$(BIN)/python benchmarks/spectral.py
	$(BIN)/python benchmarks/consensus.py

clean:
	rm -rf runs .pytest_cache
