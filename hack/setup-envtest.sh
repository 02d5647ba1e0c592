#!/usr/bin/env bash
# Prints the path of a folder holding etcd, kube-apiserver, kube-controller-manager and kubectl.
#
# Order of preference (the envtest convention first):
#   1. $KUBEBUILDER_ASSETS, when it holds the binaries;
#   2. the cache under ${NEXUS_ENVTEST_CACHE:-~/.cache/nexus/envtest}/<version>/;
#   3. a build from Debian's own kubernetes source package (hack/build-k8s.sh), then cached.
#      That build also makes the local cluster's node binaries (hack/setup-cluster-bin.sh),
#      since both sets share most of their packages.
# Quiet on success (only the path goes to stdout); progress of a build goes to stderr.
# Safe to run concurrently: a lock serialises builders, and the cache is filled atomically.
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/k8s-cache.sh
source "$HACK/lib/k8s-cache.sh"

# The apiserver and etcd are what tests need; kube-controller-manager is optional for callers
# that bring their own assets, as in controller-runtime's envtest.
if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]]; then
  printf '%s\n' "$KUBEBUILDER_ASSETS"
  exit 0
fi

k8s_has_envtest "$ENVTEST_DIR" || "$HACK/build-k8s.sh"
k8s_has_envtest "$ENVTEST_DIR" || { printf 'setup-envtest: error: %s still incomplete\n' "$ENVTEST_DIR" >&2; exit 1; }
printf '%s\n' "$ENVTEST_DIR"
