# fevae — every target is idempotent; `make help` lists them.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Data folder: $FEVAE_DATA_DIR if set, else ../shared/data beside the checkout if present,
# else none (then Debian's /usr/share/datasets/fashion-mnist and, with DOWNLOAD=1, torchvision).
DATA_DIR ?= $(or $(FEVAE_DATA_DIR),$(wildcard $(abspath ../shared/data)))
ifneq ($(strip $(DATA_DIR)),)
export FEVAE_DATA_DIR := $(DATA_DIR)
endif
EXPERIMENT ?= v2_gaussian
ARGS ?=
DATA_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
DATA_ARGS ?=
STAMP := .make

.DEFAULT_GOAL := help
.PHONY: help install data run run-v1 run-v2 run-v3 smoke test test-unit bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXPERIMENT=$(EXPERIMENT) ARGS='train overrides' DATA_ARGS='doctor overrides' BENCH_ARGS='bench options' DATA_DIR=$(DATA_DIR) PYTHON=$(PYTHON)"

install: ## install fevae (editable, from this checkout) with its test and sweep tools
	@if [ ! -f $(STAMP)/installed ] || [ pyproject.toml -nt $(STAMP)/installed ] || \
	   ! (cd / && $(PYTHON) -c "import fevae, sys; sys.exit(not fevae.__file__.startswith('$(CURDIR)/'))") 2>/dev/null; then \
	  echo "$(PIP) install -e '.[dev]'"; $(PIP) install -q -e ".[dev]" && mkdir -p $(STAMP) && touch $(STAMP)/installed; \
	else echo "fevae is installed from $(CURDIR)"; fi

data: install ## find the data and check it (the data doctor)
	$(PYTHON) -m fevae.data $(DATA_ARGS)

run: data ## install, check the data, run the main experiment (EXPERIMENT=v2_gaussian)
	$(PYTHON) -m fevae.train +experiment=$(EXPERIMENT) $(ARGS)

run-v1: ## run V1 (Bernoulli VAE on binarised images)
	$(MAKE) run EXPERIMENT=v1_bernoulli
run-v2: ## run V2 (Gaussian VAE on [0,1] images)
	$(MAKE) run EXPERIMENT=v2_gaussian
run-v3: ## run the continuous-Bernoulli VAE
	$(MAKE) run EXPERIMENT=v3_continuous_bernoulli

smoke: install ## a few batches of the whole pipeline (profile=smoke) into outputs/
	$(PYTHON) -m fevae.train +experiment=$(EXPERIMENT) profile=smoke $(ARGS)

test: install ## install and run the whole test suite (real-data tests need the data)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: install ## only the fast unit tests (no training, no real data)
	$(PYTHON) -m pytest -m "not slow and not realdata" $(PYTEST_ARGS)

bench: install ## what scoring costs: table + outputs/bench/bench.json (~8 min on 2 CPU cores; BENCH_ARGS=--quick: ~30 s)
	$(PYTHON) -m benchmarks.run $(BENCH_ARGS)

clean: ## remove caches and build stamps (never outputs/)
	rm -rf $(STAMP) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
