# odeflow: `make run` and `make test` set everything up themselves on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help install install-ray sweep table study run test lint bench up down dashboard clean

# .env (from .env.example) holds the MongoDB credentials and MONGO_URL. make does not read it: as a makefile it
# would stop every target at a line that is not KEY=VALUE, and cut a password at '$' or '#' ahead of the real
# one. The runner, the dashboard and docker compose read it themselves.
export

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(firstword $(MAKEFILE_LIST)) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# Installs come from lock files (requirements/<lock>.lock: every package, transitive ones included, written by
# make lock from pyproject.toml): default (extras dev, dashboard) or ray (dev, dashboard, ray). TORCH_CUDA=cu126
# (or another build of PyTorch's index, README.md: Installation) takes torch and its CUDA libraries from
# $(TORCH_INDEX)/<build> at the locked versions, for an NVIDIA driver too old for the locked CUDA 13.0 build.
TORCH_CUDA ?=
TORCH_INDEX ?= https://download.pytorch.org/whl
LOCKS := requirements/default.lock requirements/ray.lock
LOCKTOOL := requirements/lockfile.py
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check
# The stamp names what .venv holds: .installed-<lock>[-<torch build>]. make run, test, ... keep it (reinstalled
# when pyproject.toml or a lock changes); make install and install-ray install what they are asked.
asked = $(VENV)/.installed-$(1)$(if $(TORCH_CUDA),-$(TORCH_CUDA))
INSTALLED := $(or $(firstword $(wildcard $(VENV)/.installed-*)),$(call asked,default))
locked_version = $(shell sed -n 's/^$(1)==\([^+]*\).*/\1/p' requirements/default.lock)

# $(call install_lock,LOCK,BUILD): .venv holds exactly requirements/LOCK.lock (pip freeze equals it, checked),
# the project itself installed without dependencies; with BUILD, torch's stack from PyTorch's index for BUILD.
define install_lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) $(LOCKTOOL) prepare requirements/$(1).lock $(2) --index $(TORCH_INDEX) > $(VENV)/lock-install.txt
	@rm -f $(VENV)/.installed-* $(VENV)/.installed
	$(PIP_INSTALL) --no-deps -r $(VENV)/lock-install.txt
	$(if $(2),$(PIP_INSTALL) --index-url $(TORCH_INDEX)/$(2) torch==$(call locked_version,torch)+$(2) torchvision==$(call locked_version,torchvision)+$(2))
	$(PIP_INSTALL) --no-deps --config-settings editable_mode=compat -e .
	$(PY) $(LOCKTOOL) sync requirements/$(1).lock $(2)
	@touch $@
endef

$(VENV)/.installed-%: pyproject.toml $(LOCKS) $(LOCKTOOL)
	$(call install_lock,$(word 1,$(subst -, ,$*)),$(word 2,$(subst -, ,$*)))

install: $(call asked,default) ## Create .venv with exactly the locked packages (TORCH_CUDA=cu126: torch for an older driver)

install-ray: $(call asked,ray) ## The same with the Ray launcher (hydra/launcher=ray); make install goes back

.PHONY: lock
lock: ## Resolve requirements/*.lock from pyproject.toml after a pin changed (about 4 min; UPGRADE=1: all afresh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(LOCKTOOL) write requirements/default.lock=dev,dashboard requirements/ray.lock=dev,dashboard,ray $(if $(UPGRADE),--upgrade)

sweep: $(INSTALLED) ## A small hyperopt TPE search on spheres (offline, ~1 min on 2 CPU cores); re-run to resume
	$(PY) -m runner -m search=quickstart

run: $(INSTALLED) ## Quickstart: simple ODEnet and small ResNet on digits (offline, ~1 min on CPU; creating .venv first: ~3.5 min, once)
	$(PY) -m runner -m experiment=quickstart model=odenet_simple,resnet_simple_small

TEST_WORKERS ?= 2
test: $(INSTALLED) ## Run the default test suite (offline, CPU, ~14 min on 2 cores; starts its own database server, Omniboard and Chromium)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: gpu-check
gpu-check: $(INSTALLED) ## Smoke-check the GPU path: models, gradients, reproduce, resume, re-evaluation, OOM, fused vs torchdiffeq (~5 min on one GPU; without one it says so and exits 0)
	$(PY) bench/gpu_check.py

lint: $(INSTALLED) ## Check the code with ruff (lint rules and formatting; CI runs it before the tests; ruff format . fixes the layout)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

DATA ?= fmnist
table: $(INSTALLED) ## Thesis table 8.1 for DATA=fmnist or DATA=cifar10: the five models, then the comparison report
	$(PY) -m runner -m 'experiment=glob(thesis_$(DATA)_*)'
	$(PY) -m runner report --out runs/report/$(DATA)

STUDY ?= t_final
study: $(INSTALLED) ## A study: STUDY=t_final (table 7.3), activation_inside (7.2), activation_before (7.1); ResNet After All: critical_step, adaptation, raa_critical_step, raa_adaptation; deep limit: deep_limit, deep_limit_digits; param_efficiency (ARGS=data=fashion_mnist: any overrides)
	$(PY) -m runner -m experiment=study_$(STUDY) $(ARGS)
	$(PY) -m runner study $(STUDY)

bench: $(INSTALLED) ## Run every benchmark in bench/ (ratios measured in one run; ~20 min) and write bench/RESULTS.md
	$(PY) bench/run_all.py

up: ## Start MongoDB and Omniboard (docker compose, ports on 127.0.0.1)
	@test -f .env || { pw=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))') && (umask 077; sed "s/change-me/$$pw/g" .env.example > .env) && echo "created .env from .env.example with a random MongoDB password"; }
	@! grep -q '^MONGO_PASSWORD=change-me$$' .env || { echo "error: MONGO_PASSWORD in .env is still the example password change-me"; echo "  fix: generate one with python -c \"import secrets; print(secrets.token_urlsafe(24))\" and set it in .env (MONGO_PASSWORD and the password in MONGO_URL)"; exit 2; }
	@! grep -qE '^MONGO_(USER|PASSWORD)=.*[^A-Za-z0-9._~-]' .env || { echo "error: MONGO_USER or MONGO_PASSWORD in .env holds a character other than letters, digits and . _ ~ -, which docker-compose.yml would put into Omniboard's MongoDB URL unescaped (read as another password, or as a host)"; echo "  fix: generate one with python -c \"import secrets; print(secrets.token_urlsafe(24))\" and set it in .env (MONGO_PASSWORD and the password in MONGO_URL)"; exit 2; }
	@docker compose version >/dev/null 2>&1 || { echo "error: docker compose is not available here"; echo "  fix: install Docker with the compose plugin, or use make dashboard (no Docker)"; exit 2; }
	docker compose up -d
	@port=$$(sed -n 's/^OMNIBOARD_PORT=//p' .env | tail -n 1); echo "Omniboard: http://127.0.0.1:$${OMNIBOARD_PORT:-$${port:-9000}}  (log runs there with: .venv/bin/python -m runner tracking=mongo)"

down: ## Stop MongoDB and Omniboard (the data volume is kept)
	docker compose down

dashboard: $(INSTALLED) ## Local dashboard, no Docker: database + Omniboard on 127.0.0.1, runs copied in the background (Ctrl-C stops)
	$(PY) -m dashboard

clean: ## Remove caches (keeps .venv, runs/ and datasets/)
	rm -rf .pytest_cache **/__pycache__ *.egg-info
