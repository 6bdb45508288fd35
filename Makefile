# Two entry points (README): `make tune` runs the main job, `make test` the test suite.
# Both create .venv and install the project on first use (CPU torch pinned in requirements.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: tune test lint install clean

$(STAMP): setup.cfg pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

tune: $(STAMP)
	$(BIN)/hypergrad tune --dataset digits --logdir runs/quickstart --overwrite

test: $(STAMP)
	$(BIN)/ruff check hypergrad tests recipes benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
