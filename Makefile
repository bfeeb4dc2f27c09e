# fevae — every target is idempotent; `make help` lists them.
# Everything is installed into a project virtual environment, .venv/ (made on first use by
# BASE_PYTHON -m venv), never into the active Python. VENV_ARGS=--system-site-packages (default)
# lets .venv reuse packages the system already has (a 5 GB torch), while pip installs anything
# missing or too old into .venv only; VENV_ARGS= makes a fully isolated one (rm -rf .venv first).
# PYTHON=python3 (any interpreter) skips the venv and installs into that interpreter instead.
VENV ?= .venv
VENV_ARGS ?= --system-site-packages
BASE_PYTHON ?= python3
PYTHON ?= $(VENV)/bin/python
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
FLOORS_ARGS ?=
# Install stamps, one folder per interpreter (PYTHON=... installs anew into another one).
STAMP := .make/$(subst /,_,$(PYTHON))
# PYTHON as a command that works from any folder (a path is made absolute, a bare name is left to PATH).
PYTHON_CMD := $(if $(findstring /,$(PYTHON)),$(abspath $(PYTHON)),$(PYTHON))
# .venv is made only when PYTHON is its interpreter.
VENV_DEP := $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)

.DEFAULT_GOAL := help
.PHONY: help venv install install-test data run run-v1 run-v2 run-v3 smoke test test-unit docs bench check-floors clean clean-venv

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXPERIMENT=$(EXPERIMENT) ARGS='train overrides' DATA_ARGS='doctor overrides' BENCH_ARGS='bench options' DATA_DIR=$(DATA_DIR)"
	@echo "             PYTHON=$(PYTHON) VENV_ARGS='$(VENV_ARGS)' BASE_PYTHON=$(BASE_PYTHON) (see the top of the Makefile)"

$(VENV)/bin/python:
	@echo "$(BASE_PYTHON) -m venv $(VENV_ARGS) $(VENV)"
	@$(BASE_PYTHON) -m venv $(VENV_ARGS) $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV): install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2; exit 1; }

venv: $(VENV_DEP) ## create the project virtual environment .venv/ (with VENV_ARGS)

# $(1): the extra to install with the package ('' = none). Reinstalls when its stamp is missing or
# older than pyproject.toml, or when PYTHON does not import fevae from this checkout.
define install_fevae
	@stamp=$(STAMP)/installed$(if $(1),-$(1)); \
	if [ -f $$stamp ] && ! [ pyproject.toml -nt $$stamp ] && (cd / && $(PYTHON_CMD) -c \
	   "import fevae, sys; sys.exit(not fevae.__file__.startswith('$(CURDIR)/'))") 2>/dev/null; then \
	  echo "fevae$(if $(1),[$(1)]) is installed from $(CURDIR) into $(PYTHON)"; \
	else \
	  echo "$(PIP) install -e '.$(if $(1),[$(1)])'"; \
	  $(PIP) install -q -e '.$(if $(1),[$(1)])' && mkdir -p $(STAMP) && touch $$stamp $(STAMP)/installed; \
	fi
endef

install: $(VENV_DEP) ## install fevae alone (editable, from this checkout) into .venv (or PYTHON)
	$(call install_fevae,)

install-test: $(VENV_DEP) ## install fevae with its test extra (pytest and the sweep plugins)
	$(call install_fevae,test)

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

test: install-test ## install, check the import layers (lint-imports), run the whole test suite (real-data tests need the data)
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'  # lint-imports: .importlinter
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: install-test ## only the fast unit tests (no training, no real data)
	$(PYTHON) -m pytest -m "not slow and not realdata" $(PYTEST_ARGS)

docs: install-test ## build the documentation site into site/ (mkdocs, warnings are errors)
	$(PYTHON) -m mkdocs build --strict --site-dir site

bench: install ## what scoring costs: table + outputs/bench/bench.json (~8 min on 2 CPU cores; BENCH_ARGS=--quick: ~30 s)
	$(PYTHON) -m benchmarks.run $(BENCH_ARGS)

check-floors: $(VENV_DEP) ## install every dependency at its declared floor into .floors-venv/ (Python 3.10) and run the smoke pipeline there (~3 GB download, ~10 min)
	$(PYTHON) scripts/check_floors.py $(FLOORS_ARGS)

clean: ## remove caches, build files and install stamps (never outputs/ nor .venv/)
	rm -rf .make .pytest_cache *.egg-info build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-venv: ## remove the project virtual environment .venv/ (the next make recreates it)
	rm -rf $(VENV) .make
