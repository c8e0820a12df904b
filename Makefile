# odeflow: `make run` and `make test` set everything up themselves on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install install-ray sweep table study run test lint bench up down dashboard clean

# .env (from .env.example) holds the MongoDB credentials and MONGO_URL; exported to every command.
-include .env
export

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(firstword $(MAKEFILE_LIST)) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev,dashboard]'
	@touch $(INSTALLED)

install: $(INSTALLED) ## Create .venv and install the project with pinned dependencies

install-ray: $(INSTALLED) ## Add the Ray launcher (hydra/launcher=ray) to .venv
	$(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev,dashboard,ray]'

sweep: $(INSTALLED) ## A small hyperopt TPE search on spheres (offline, a few minutes); re-run to resume
	$(PY) -m runner -m search=quickstart

run: $(INSTALLED) ## Quickstart: simple ODEnet and small ResNet on digits (offline, a few minutes on CPU)
	$(PY) -m runner -m experiment=quickstart model=odenet_simple,resnet_simple_small

TEST_WORKERS ?= 2
test: $(INSTALLED) ## Run the default test suite (offline, CPU; starts its own database server, Omniboard and Chromium)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(INSTALLED) ## Check the code with ruff (lint rules and formatting; CI runs it before the tests; ruff format . fixes the layout)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

DATA ?= fmnist
table: $(INSTALLED) ## Thesis table 8.1 for DATA=fmnist or DATA=cifar10: the five models, then the comparison report
	$(PY) -m runner -m 'experiment=glob(thesis_$(DATA)_*)'
	$(PY) -m runner report --out runs/report/$(DATA)

STUDY ?= t_final
study: $(INSTALLED) ## A study: STUDY=t_final (table 7.3), activation_inside (7.2), activation_before (7.1); ResNet After All: critical_step, adaptation
	$(PY) -m runner -m experiment=study_$(STUDY)
	$(PY) -m runner study $(STUDY)

bench: $(INSTALLED) ## Run every benchmark in bench/ (ratios measured in one run; ~20 min) and write bench/RESULTS.md
	$(PY) bench/run_all.py

up: ## Start MongoDB and Omniboard (docker compose, ports on 127.0.0.1)
	@docker compose version >/dev/null 2>&1 || { echo "docker compose is not available here: install Docker with the compose plugin, or use make dashboard (no Docker)"; exit 2; }
	@test -f .env || { pw=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))') && (umask 077; sed "s/change-me/$$pw/g" .env.example > .env) && echo "created .env from .env.example with a random MongoDB password"; }
	@! grep -q '^MONGO_PASSWORD=change-me$$' .env || { echo "error: MONGO_PASSWORD in .env is still the example password change-me"; echo "  fix: generate one with python -c \"import secrets; print(secrets.token_urlsafe(24))\" and set it in .env (MONGO_PASSWORD and the password in MONGO_URL)"; exit 2; }
	docker compose up -d
	@echo "Omniboard: http://127.0.0.1:$${OMNIBOARD_PORT:-9000}  (log runs there with: .venv/bin/python -m runner tracking=mongo)"

down: ## Stop MongoDB and Omniboard (the data volume is kept)
	docker compose down

dashboard: $(INSTALLED) ## Local dashboard, no Docker: database + Omniboard on 127.0.0.1, runs copied in the background (Ctrl-C stops)
	$(PY) -m dashboard

clean: ## Remove caches (keeps .venv, runs/ and datasets/)
	rm -rf .pytest_cache **/__pycache__ *.egg-info
