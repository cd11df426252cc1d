# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
NODE_STAMP := node_modules/.package-lock.json
WORKDIR ?= .work
REGISTRY ?= kfpps.azurecr.io
IMAGE_TAG ?= $(shell $(PYTHON) -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")

.DEFAULT_GOAL := help
.PHONY: help setup run stop test test-fast lint compile images lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(DEPS_STAMP) $(NODE_STAMP) ## create .venv with the pinned packages and Azurite (fast when nothing changed)

# Re-runs only when a lock or pyproject changes: `make setup` is idempotent and quick otherwise.
# requirements.lock is the runtime tree (what the image installs); requirements-test.lock adds the test tools.
$(DEPS_STAMP): requirements.lock requirements-test.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-test.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

# Azurite (the Azure Storage emulator) for the Blob tests, pinned by package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

run: setup ## run the whole pipeline locally (kfp.local), deploy it, print a REST prediction
	$(PY) -m pipelines run --local --workdir $(WORKDIR)

stop: ## stop the local model server started by `make run`
	@if [ -x $(PY) ]; then $(PY) -m pipelines stop --workdir $(WORKDIR); else echo "nothing to stop"; fi

test: setup ## run the test suite
	$(PY) -m pytest

test-fast: setup ## the suite without the slow tests (training processes, whole pipeline runs)
	$(PY) -m pytest -m "not slow"

lint: setup ## static checks (ruff)
	$(VENV)/bin/ruff check components pipelines serving tests benchmarks

compile: setup ## write the pipeline package for the Kubeflow UI to build/pipeline.yaml
	$(PY) -m pipelines compile --output build/pipeline.yaml

IMAGE ?= $(REGISTRY)/kfp-ps-classifier:$(IMAGE_TAG)

images: ## build the project image (pipeline steps, training, serving) tagged for $(REGISTRY) (needs docker)
	docker build -f manifests/docker/Dockerfile -t $(IMAGE) .
	@echo "built $(IMAGE); push it with: docker push $(IMAGE)"

# The runtime tree is resolved alone, then the test tools are resolved against it (-c): they can never
# move a runtime pin, and requirements-test.lock holds only what they add.
lock: ## re-resolve the pinned trees: requirements.lock (runtime) and requirements-test.lock (needs the registry)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e .
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	.lock-venv/bin/pip install --quiet -e ".[test]" -c requirements.lock
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' | grep -vxFf requirements.lock > requirements-test.lock
	rm -rf .lock-venv

clean: stop ## remove local run outputs (keeps .venv)
	rm -rf $(WORKDIR) build
