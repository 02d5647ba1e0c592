# shellcheck shell=bash
# Sourced by the scripts that provide Kubernetes binaries: where each set is cached and how to
# tell that a cache folder is complete. One compilation of the source fills both sets
# (hack/build-k8s.sh), so that the packages they share are compiled once.

K8S_VERSION="1.20.2"
ENVTEST_ROOT="${NEXUS_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/envtest}"
ENVTEST_DIR="$ENVTEST_ROOT/$K8S_VERSION"
NODEBIN_ROOT="${NEXUS_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/cluster}"
NODEBIN_DIR="$NODEBIN_ROOT/bin-$K8S_VERSION"

# The control plane of envtest (etcd comes from Debian's etcd-server package, the rest is built).
ENVTEST_GO_BINARIES=(kube-apiserver kube-controller-manager kubectl)
ENVTEST_BINARIES=(etcd "${ENVTEST_GO_BINARIES[@]}")
# The node of the local cluster (hack/cluster.sh), plus a static `pause` built with gcc.
NODE_GO_BINARIES=(kubelet kube-scheduler kube-proxy)
NODE_BINARIES=("${NODE_GO_BINARIES[@]}" pause)

k8s_has_envtest() {  # DIR
  local b
  for b in "${ENVTEST_BINARIES[@]}"; do [[ -x "$1/$b" ]] || return 1; done
}

k8s_has_nodebin() {  # DIR
  local b
  for b in "${NODE_BINARIES[@]}"; do [[ -x "$1/$b" ]] || return 1; done
  [[ -s "$1/pause.version" ]]
}
