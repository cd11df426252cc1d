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
.PHONY: help setup run monitor stop test test-fast lint compile image images image-test push lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(DEPS_STAMP) $(NODE_STAMP) ## create .venv with the pinned packages, Azurite and headless Chromium (fast when nothing changed)
	@# The browser test of the reports needs it; where it cannot be installed that test skips, saying so.
	-@bash .ci/install-browser --quiet

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

monitor: setup ## the drift report of what `make run`'s server collected in the last 24 h (monitoring pipeline)
	$(PY) -m pipelines run --local --pipeline monitoring --workdir $(WORKDIR)

stop: ## stop every local model server this checkout started (`make run`, any --workdir)
	@if [ -x $(PY) ]; then $(PY) -m pipelines stop; else echo "nothing to stop"; fi

test: setup ## run the test suite
	$(PY) -m pytest

test-fast: setup ## the suite without the slow tests (training processes, whole pipeline runs)
	$(PY) -m pytest -m "not slow"

lint: setup ## static checks (ruff)
	$(VENV)/bin/ruff check components pipelines serving tests benchmarks

compile: setup ## write both pipeline packages for the Kubeflow UI to build/ (pipeline.yaml, monitoring.yaml)
	$(PY) -m pipelines compile --output build/pipeline.yaml
	$(PY) -m pipelines compile --pipeline monitoring --output build/monitoring.yaml

IMAGE ?= $(REGISTRY)/kfp-ps-classifier:$(IMAGE_TAG)
# What `make image` builds and `make image-test` runs: a local name, so `make push REGISTRY=…` can send the
# same build to any registry.
BUILT_IMAGE ?= localhost/kfp-ps-classifier:$(IMAGE_TAG)

# The release stages (README, "Release"); none of them is part of `make test`.
image: ## build the project image (localhost/kfp-ps-classifier:VERSION): docker, else buildah; a Debian-built base where python:3.11 cannot be pulled
	.ci/image-build $(BUILT_IMAGE)

images: image ## the same as `make image` (its former name)

image-test: ## smoke-test the built image from inside: user, packages, a KFP component, 2-worker training, v1/v2 serving
	.ci/image-test $(BUILT_IMAGE)

push: ## push the built image to REGISTRY=… and print its digest reference, the PIPELINE_IMAGE to compile/submit with
	.ci/image-push $(BUILT_IMAGE) $(IMAGE)

# The runtime tree is resolved alone, then the test tools are resolved against it (-c): they can never
# move a runtime pin, and requirements-test.lock holds only what they add.
lock: ## re-resolve the pinned trees: requirements.lock (runtime) and requirements-test.lock (needs the registry)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e .
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	.lock-venv/bin/pip install --quiet -e ".[test]" -c requirements.lock
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' | grep -vxFf requirements.lock > requirements-test.lock
	rm -rf .lock-venv

# A model registry is the one thing here a rerun cannot give back: deleting one is asked first (FORCE=1 skips
# the question), and where nobody can answer (CI=true, no terminal) it is refused instead of waiting.
clean: ## remove local run outputs (keeps .venv); asks first if that deletes a model registry (FORCE=1: no question)
	@versions=$$(ls -d $(WORKDIR)/store/models/*/versions/* 2>/dev/null | wc -l); \
	if [ "$$versions" -gt 0 ] && [ "$(FORCE)" != 1 ]; then \
	  if { [ -n "$$CI" ] && [ "$$CI" != false ]; } || [ ! -t 0 ]; then \
	    echo "error: $(WORKDIR)/store holds a model registry (versions: $$versions) and there is no terminal to ask on;" \
	      "run make clean FORCE=1 to delete it" >&2; \
	    exit 1; \
	  fi; \
	  read -r -p "$(WORKDIR)/store holds a model registry (versions: $$versions). Delete it with the rest of $(WORKDIR)? [y/N] " answer; \
	  case "$$answer" in [yY]|[yY][eE][sS]) ;; *) echo "kept $(WORKDIR): nothing deleted"; exit 0;; esac; \
	fi; \
	if [ -x $(PY) ]; then $(PY) -m pipelines stop --workdir $(WORKDIR); fi; \
	rm -rf $(WORKDIR) build; \
	echo "removed $(WORKDIR) and build"
