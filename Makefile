# Two entry points: `make demo` (the main job end to end) and `make test` (the whole suite).
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first, so the project's `torch>=2.4` is already satisfied.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/anomaly demo --workdir demo-run

test: $(STAMP)
	$(BIN)/ruff check training pipelines service tests benchmarks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check training pipelines service tests benchmarks

clean:
	rm -rf $(VENV) demo-run .pytest_cache
