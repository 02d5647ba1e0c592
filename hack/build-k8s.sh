#!/usr/bin/env bash
# Builds, in one compilation of Debian's kubernetes source package, every binary that the
# envtest cache or the node-binary cache lacks (hack/lib/k8s-cache.sh), and fills each cache
# atomically. The two sets share most of their packages (client-go, apimachinery, the API
# types), so compiling them together costs little more than the larger set alone.
# Used by hack/setup-envtest.sh and hack/setup-cluster-bin.sh; progress goes to stderr.
# A lock serialises builders; a builder that waited re-checks what is still missing.
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'build-k8s: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/k8s-cache.sh
source "$HACK/lib/k8s-cache.sh"
# shellcheck source=lib/k8s-source.sh
source "$HACK/lib/k8s-source.sh"

mkdir -p "$ENVTEST_ROOT" "$NODEBIN_ROOT"
exec 9>"$ENVTEST_ROOT/.lock"
if ! flock -n 9; then
  log "another build of Kubernetes binaries is running; waiting for it"
  flock 9
fi

need_envtest=""; k8s_has_envtest "$ENVTEST_DIR" || need_envtest=1
need_node=""; k8s_has_nodebin "$NODEBIN_DIR" || need_node=1
[[ -n $need_envtest || -n $need_node ]] || exit 0

[[ "$(id -u)" == 0 ]] || die "building needs root for apt-get (or set KUBEBUILDER_ASSETS)"
command -v apt-get >/dev/null || die "no apt-get: set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver"
export DEBIAN_FRONTEND=noninteractive

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nexus-k8s-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# Tools' chatter goes to a log that is shown only when a step fails.
quiet() {
  local what="$1"; shift
  if ! "$@" >>"$WORK/steps.log" 2>&1; then
    tail -n 40 "$WORK/steps.log" >&2
    die "$what failed (log above)"
  fi
}

# Go binaries missing from either cache; the rest is copied from the cache that has it.
missing=()
if [[ -n $need_envtest ]]; then
  for b in "${ENVTEST_GO_BINARIES[@]}"; do [[ -x "$ENVTEST_DIR/$b" ]] || missing+=("$b"); done
fi
if [[ -n $need_node ]]; then
  for b in "${NODE_GO_BINARIES[@]}"; do [[ -x "$NODEBIN_DIR/$b" ]] || missing+=("$b"); done
fi
log "building Kubernetes $K8S_VERSION from Debian sources: ${missing[*]:-pause} (once; ~10 min)"
k8s_add_deb_src
log "installing build dependencies"
quiet "apt-get update" apt-get update
quiet "apt-get install" apt-get install -y --no-install-recommends \
  etcd-server golang-go rsync golang-github-modern-go-reflect2-dev make gcc libc6-dev openssl

log "downloading the kubernetes source package"
k8s_unpack_patched_source src
cd src

# Dockershim gives every pod sandbox oom_score_adj -998 and the qos policy gives Guaranteed
# containers -997. Lowering oom_score_adj needs CAP_SYS_RESOURCE, which root lacks in some
# sandboxes and VMs; runc then fails every sandbox ("can't get final child's PID from pipe").
# A local test cluster loses nothing by leaving them at 0. Only the kubelet uses these files.
sed -i 's/^\(\s*defaultSandboxOOMAdj\s*int\s*=\s*\)-998/\10/' pkg/kubelet/dockershim/docker_sandbox.go
sed -i 's/^\(\s*guaranteedOOMScoreAdj\s*int\s*=\s*\)-997/\10/' pkg/kubelet/qos/policy.go
grep -Eq 'defaultSandboxOOMAdj\s+int\s*=\s*0' pkg/kubelet/dockershim/docker_sandbox.go \
  || die "oom_score_adj patch of docker_sandbox.go failed"
grep -Eq 'guaranteedOOMScoreAdj\s+int\s*=\s*0' pkg/kubelet/qos/policy.go \
  || die "oom_score_adj patch of qos/policy.go failed"

if ((${#missing[@]})); then
  what=""
  for b in "${missing[@]}"; do what+="cmd/$b "; done
  log "compiling ${missing[*]} (the slow step)"
  export HOME="${HOME:-/root}" CGO_ENABLED=0
  quiet "make" make WHAT="$what" GOLDFLAGS="-s -w"
fi

pick() {  # BINARY CACHE_DIR: the fresh build, else the cached copy
  if [[ -x "_output/bin/$1" ]]; then printf '%s\n' "_output/bin/$1"; else printf '%s\n' "$2/$1"; fi
}

install_dir() {  # STAGING FINAL: replace FINAL by the complete STAGING in one rename
  rm -rf "$2"
  mv "$1" "$2"
  log "cached in $2"
}

if [[ -n $need_envtest ]]; then
  staging="$ENVTEST_ROOT/.staging.$$"
  rm -rf "$staging"; mkdir -p "$staging"
  for b in "${ENVTEST_GO_BINARIES[@]}"; do cp "$(pick "$b" "$ENVTEST_DIR")" "$staging/"; done
  etcd_bin="$(command -v etcd || true)"
  [[ -n "$etcd_bin" ]] || etcd_bin=/usr/bin/etcd
  [[ -x "$etcd_bin" ]] || die "etcd not found after installing etcd-server"
  cp "$etcd_bin" "$staging/etcd"
  k8s_has_envtest "$staging" || die "built binaries missing from $staging"
  install_dir "$staging" "$ENVTEST_DIR"
fi

if [[ -n $need_node ]]; then
  # The pod sandbox's init process, as the upstream build makes it (build/pause/Makefile).
  pause_tag="$(sed -n 's/^TAG[[:space:]]*[?:]*=[[:space:]]*\([0-9][0-9.]*\).*/\1/p' build/pause/Makefile | head -n1)"
  [[ -n "$pause_tag" ]] || die "cannot read the pause version from build/pause/Makefile"
  log "compiling pause $pause_tag"
  mkdir -p _output
  quiet "gcc pause" gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-nexus" \
    -o _output/pause build/pause/linux/pause.c
  strip _output/pause
  staging="$NODEBIN_ROOT/.staging.$$"
  rm -rf "$staging"; mkdir -p "$staging"
  for b in "${NODE_GO_BINARIES[@]}"; do cp "$(pick "$b" "$NODEBIN_DIR")" "$staging/"; done
  cp _output/pause "$staging/pause"
  printf '%s\n' "$pause_tag" >"$staging/pause.version"
  k8s_has_nodebin "$staging" || die "built binaries missing from $staging"
  install_dir "$staging" "$NODEBIN_DIR"
fi
