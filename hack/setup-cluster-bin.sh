#!/usr/bin/env bash
# Prints the path of a folder holding the node binaries of the local cluster (hack/cluster.sh):
# kubelet, kube-scheduler, kube-proxy and a static `pause`, built from the same Debian
# kubernetes source package as the envtest binaries, in the same compilation
# (hack/build-k8s.sh), and cached beside them under
# ${NEXUS_CLUSTER_CACHE:-~/.cache/nexus/cluster}/bin-<version>/.
# Quiet on success (only the path goes to stdout); progress of a build goes to stderr.
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/k8s-cache.sh
source "$HACK/lib/k8s-cache.sh"

k8s_has_nodebin "$NODEBIN_DIR" || "$HACK/build-k8s.sh"
k8s_has_nodebin "$NODEBIN_DIR" || { printf 'setup-cluster-bin: error: %s still incomplete\n' "$NODEBIN_DIR" >&2; exit 1; }
printf '%s\n' "$NODEBIN_DIR"
