#!/usr/bin/env bash
# Staged bootstrap of Nexus on a local Kind cluster (for machines with Docker and Kind):
#   1. cluster  2. CRDs  3. image (build + load)  4. deploy  5. seed a tenant and an agent
# Each stage is idempotent; run one with: hack/bootstrap.sh <stage>.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-nexus}"
IMG="${IMG:-nexus:dev}"
NODE_IMAGE="${NODE_IMAGE:-ghcr.io/monaccode/astromesh:latest}"

need() { command -v "$1" >/dev/null || { echo "bootstrap: $1 is required" >&2; exit 1; }; }
stage() { printf '\n== %s ==\n' "$*"; }

cluster() {
  stage "1/5 Kind cluster $CLUSTER"
  need kind; need kubectl
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  kubectl cluster-info --context "kind-$CLUSTER"
}

crds() {
  stage "2/5 CRDs"
  kubectl apply -k config/crd
  kubectl wait --for=condition=Established --timeout=60s \
    crd/nexustenants.nexus.astromesh.io crd/nexusagents.nexus.astromesh.io
}

image() {
  stage "3/5 image $IMG"
  need docker
  docker build -t "$IMG" .
  kind load docker-image "$IMG" --name "$CLUSTER"
}

deploy() {
  stage "4/5 deploy"
  kubectl get namespace nexus-system >/dev/null 2>&1 || kubectl create namespace nexus-system
  if ! kubectl -n nexus-system get secret nexus-jwt >/dev/null 2>&1; then
    kubectl -n nexus-system create secret generic nexus-jwt \
      --from-literal=secret="$(openssl rand -base64 48 | tr -d '\n')"
  fi
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  if ! kubectl -n nexus-system get secret nexus-webhook-server-cert >/dev/null 2>&1; then
    # A self-signed CA and serving pair; the manager writes the CA into its webhook
    # configurations when it starts (cert-manager users: see config/certmanager).
    "${PYTHON:-.venv/bin/python}" -m nexus.runtime.webhook \
      --host nexus-webhook-service.nexus-system.svc --out "$tmp/webhook-certs" >/dev/null
    kubectl -n nexus-system create secret generic nexus-webhook-server-cert \
      --from-file="$tmp/webhook-certs"
  fi
  cp -r config "$tmp/"
  (cd "$tmp/config/manager" && kubectl kustomize . >/dev/null)  # validate
  kubectl kustomize config/default \
    | sed "s#image: nexus:latest#image: $IMG#" \
    | sed "s#- --leader-elect#- --leader-elect\n            - --node-image=$NODE_IMAGE#" \
    | kubectl apply -f -
  kubectl -n nexus-system rollout status deployment/nexus-controller-manager --timeout=180s
}

seed() {
  stage "5/5 seed"
  kubectl apply -f config/samples/nexus_v1alpha1_nexustenant.yaml
  kubectl -n nexus-system wait --for=jsonpath='{.status.phase}'=Ready nexustenant/tenant-dev \
    --timeout=180s
  kubectl apply -f config/samples/nexus_v1alpha1_nexusagent.yaml
  kubectl get nexustenants,nexusagents -A
  echo "API: kubectl -n nexus-system port-forward svc/nexus-api 8080:8080"
}

if [[ $# -gt 0 ]]; then "$@"; else cluster; crds; image; deploy; seed; fi
