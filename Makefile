# Nexus — kubebuilder-style targets. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
$(VENV)/.installed: pyproject.toml
	@py="$$(hack/find-python.sh)"; \
	  if [[ ! -x $(PY) ]]; then echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV); fi
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with Nexus installed editable plus the test extras.

.PHONY: envtest
envtest: ## Build (once) and print the folder of etcd/kube-apiserver/kube-controller-manager.
	@hack/setup-envtest.sh

.PHONY: fmt
fmt: venv ## Format the code.
	$(VENV)/bin/ruff format nexus tests bench examples
	$(VENV)/bin/ruff check --fix nexus tests bench examples

.PHONY: lint
lint: venv ## ruff, mypy --strict and the import contracts.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: test
test: venv ## Everything CI runs: lint, then the whole test suite on a real control plane.
	@assets="$$(hack/setup-envtest.sh)"; \
	  $(MAKE) --no-print-directory lint; \
	  KUBEBUILDER_ASSETS="$$assets" $(VENV)/bin/pytest --ignore=tests/e2e $(PYTEST_ARGS)

.PHONY: dev
dev: venv ## Run Nexus locally: embedded control plane, real astromesh node, API on :8080.
	@$(PY) -m nexus.dev

.PHONY: dev-clean
dev-clean: ## Forget the local dev state (.nexus/).
	rm -rf .nexus

.PHONY: manifests
manifests: venv ## Regenerate the CRDs in config/crd/bases.
	$(PY) hack/gen_crds.py

##@ Deployment
KUBECTL ?= $(shell command -v kubectl || echo "$$(hack/setup-envtest.sh)/kubectl")
IMG ?= nexus:latest
CONTAINER_TOOL ?= docker
BASE_IMAGE ?=
DOCKER_BUILD_ARGS ?=
DEPLOY_DIR ?= config/default

.PHONY: install
install: ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUBECTL) apply -k config/crd

.PHONY: uninstall
uninstall: ## Remove the CRDs (and with them every NexusTenant and NexusAgent).
	$(KUBECTL) delete -k config/crd --ignore-not-found

.PHONY: run
run: venv ## Run the manager against the cluster of the current kubeconfig (needs NEXUS_JWT_SECRET).
	$(VENV)/bin/nexus manager --log-format=console

.PHONY: docker-build
docker-build: ## Build the manager image (IMG=..., BASE_IMAGE=... instead of python:3.12-slim).
	$(CONTAINER_TOOL) build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(DOCKER_BUILD_ARGS) -t $(IMG) .

.PHONY: deploy
deploy: ## Deploy Nexus (CRDs, RBAC, manager) with the image IMG (DEPLOY_DIR=config/default).
	$(KUBECTL) kustomize $(DEPLOY_DIR) | sed "s#image: nexus:latest#image: $(IMG)#" | $(KUBECTL) apply -f -

.PHONY: undeploy
undeploy: ## Remove what deploy created.
	$(KUBECTL) delete -k config/default --ignore-not-found

.PHONY: deploy-ha
deploy-ha: ## Deploy two replicas on your own PostgreSQL (config/ha; Secrets first, see README).
	$(KUBECTL) kustomize config/ha | sed "s#image: nexus:latest#image: $(IMG)#" | $(KUBECTL) apply -f -

.PHONY: undeploy-ha
undeploy-ha: ## Remove what deploy-ha created.
	$(KUBECTL) delete -k config/ha --ignore-not-found

##@ Local cluster (a real single-node Kubernetes on this machine; root, Linux)
.PHONY: cluster-up
cluster-up: venv ## Start the cluster, build the images, deploy Nexus; prints its URL and kubeconfig.
	PYTHON=$(PY) hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the cluster and undo every change it made to the machine.
	hack/cluster.sh down
	hack/cluster.sh check-clean

.PHONY: test-e2e
test-e2e: venv ## End-to-end tests against the cluster of cluster-up.
	$(VENV)/bin/pytest tests/e2e -m e2e $(PYTEST_ARGS)
