# visiondistill — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TASK ?= all
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format benchmark benchmark-gpu mutation clean

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

benchmark-gpu: $(STAMP) ## Recipes' epoch time, images/s, GPU utilisation vs plain PyTorch (BENCH_ARGS="--device cpu --smoke")
	$(PY) benchmarks/gpu_recipes.py $(BENCH_ARGS)

# The mutants `make mutation` scores (mutmut's names): the four pure modules whole, and tasks/detection.py's
# module-level helpers (DetectionTask's methods are trained, not unit-tested). Which files are mutated and which
# tests run is in setup.cfg's [mutmut] section.
MUTATION_SCOPE ?= ^visiondistill[.](distill[.]losses|explain[.]metrics|core[.]maps|tasks[.]keypoint_metrics)[.]|^visiondistill[.]tasks[.]detection[.]x_

mutation: $(STAMP) ## Mutation testing (mutmut) of the pure modules against their unit tests: score and survivors (slow; not in test)
	rm -rf mutants
	$(VENV)/bin/mutmut run > mutmut-run.log 2>&1 || { tail -c 3000 mutmut-run.log; exit 1; }
	@$(VENV)/bin/mutmut results --all true | awk -v scope='$(MUTATION_SCOPE)' '\
		{ name = $$1; sub(/:$$/, "", name); $$1 = ""; status = substr($$0, 2) } \
		name !~ scope { next } \
		{ count[status]++; total++ } \
		status != "killed" { left[++n] = status ": " name } \
		END { \
			for (i = 1; i <= n; i++) print "  " left[i]; \
			for (s in count) printf "%s %d; ", s, count[s]; \
			printf "\nmutation score: %d killed of %d mutants = %.1f%%\n", count["killed"], total, 100 * count["killed"] / total }'

clean: ## Remove runs, generated data and caches (keeps .venv)
	rm -rf runs data lightning_logs .pytest_cache .ruff_cache mutants mutmut-run.log
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
