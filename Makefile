# odeflow: `make run` and `make test` set everything up themselves on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-all clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(INSTALLED)

install: $(INSTALLED) ## Create .venv and install the project with pinned dependencies

run: $(INSTALLED) ## Quickstart: simple ODEnet and small ResNet on digits (offline, a few minutes on CPU)
	$(PY) -m runner -m experiment=quickstart model=odenet_simple,resnet_simple_small

test: $(INSTALLED) ## Run the default test suite (offline, CPU, no server)
	$(PY) -m pytest -q

test-all: $(INSTALLED) ## Run every test, slow ones included
	$(PY) -m pytest -q -m ''

clean: ## Remove caches (keeps .venv, runs/ and datasets/)
	rm -rf .pytest_cache **/__pycache__ *.egg-info
