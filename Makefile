# visiondistill — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TASK ?= all
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format benchmark clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the dependency files change; a second `make test` installs nothing.
$(STAMP): $(PY) setup.cfg pyproject.toml requirements/torch.txt
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements/torch.txt
	$(PY) -m pip install -c requirements/torch.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install the package with its dev tools

demo: $(STAMP) ## Synthesise data, train teacher / scratch / distilled students, write the reports (TASK=classification|segmentation|detection|keypoints|all)
	$(PY) -m visiondistill.demo --task $(TASK)

test: $(STAMP) ## Run the fast test suite (everything not marked slow)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

benchmark: $(STAMP) ## Measure the distillation overhead (ratios from one process)
	$(PY) benchmarks/distill_overhead.py

clean: ## Remove runs, generated data and caches (keeps .venv)
	rm -rf runs data lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
