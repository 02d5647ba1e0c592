#!/usr/bin/env bash
# Prints the path of a folder holding etcd, kube-apiserver, kube-controller-manager and kubectl.
#
# Order of preference (the envtest convention first):
#   1. $KUBEBUILDER_ASSETS, when it holds the binaries;
#   2. the cache under ${NEXUS_ENVTEST_CACHE:-~/.cache/nexus/envtest}/<version>/;
#   3. a build from Debian's own kubernetes source package, then cached.
# Quiet on success (only the path goes to stdout); progress of a build goes to stderr.
# Safe to run concurrently: a lock serialises builders, and the cache is filled atomically.
set -euo pipefail

K8S_VERSION="1.20.2"
CACHE_ROOT="${NEXUS_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/envtest}"
CACHE_DIR="$CACHE_ROOT/$K8S_VERSION"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)
GO_BINARIES=(kube-apiserver kube-controller-manager kubectl)

log() { printf 'setup-envtest: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/k8s-source.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/k8s-source.sh"

has_all() {
  local dir="$1" b
  for b in "${BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

# The apiserver and etcd are what tests need; kube-controller-manager is optional for callers
# that bring their own assets, as in controller-runtime's envtest.
has_core() { [[ -x "$1/etcd" && -x "$1/kube-apiserver" ]]; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && has_core "$KUBEBUILDER_ASSETS"; then
  printf '%s\n' "$KUBEBUILDER_ASSETS"
  exit 0
fi

if has_all "$CACHE_DIR"; then
  printf '%s\n' "$CACHE_DIR"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
  log "another build of the control-plane binaries is running; waiting for it"
  flock 9
fi
# Someone else may have finished while we waited for the lock.
if has_all "$CACHE_DIR"; then
  printf '%s\n' "$CACHE_DIR"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "building needs root for apt-get (or set KUBEBUILDER_ASSETS)"
command -v apt-get >/dev/null || die "no apt-get: set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver"

export DEBIAN_FRONTEND=noninteractive
log "building Kubernetes $K8S_VERSION control-plane binaries from Debian sources (once; ~7-10 min)"

k8s_add_deb_src

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

log "installing build dependencies (etcd-server golang-go rsync reflect2)"
quiet "apt-get update" apt-get update
quiet "apt-get install" apt-get install -y --no-install-recommends \
  etcd-server golang-go rsync golang-github-modern-go-reflect2-dev make openssl

log "downloading the kubernetes source package"
k8s_unpack_patched_source src
cd src

# Only what the cache lacks (a cache from an older version of this script may lack kubectl).
missing=()
for b in "${GO_BINARIES[@]}"; do [[ -x "$CACHE_DIR/$b" ]] || missing+=("$b"); done
what=""
for b in "${missing[@]}"; do what+="cmd/$b "; done
log "compiling ${missing[*]} (this is the slow step)"
export HOME="${HOME:-/root}" CGO_ENABLED=0
quiet "make" make WHAT="$what" GOLDFLAGS="-s -w"

staging="$CACHE_ROOT/.staging.$$"
rm -rf "$staging"
mkdir -p "$staging"
for b in "${GO_BINARIES[@]}"; do
  if [[ -x "_output/bin/$b" ]]; then cp "_output/bin/$b" "$staging/"; else cp "$CACHE_DIR/$b" "$staging/"; fi
done
etcd_bin="$(command -v etcd || true)"
[[ -n "$etcd_bin" ]] || etcd_bin=/usr/bin/etcd
[[ -x "$etcd_bin" ]] || die "etcd not found after installing etcd-server"
cp "$etcd_bin" "$staging/etcd"
has_all "$staging" || die "built binaries missing from $staging"
rm -rf "$CACHE_DIR"
mv "$staging" "$CACHE_DIR"
log "cached in $CACHE_DIR"
printf '%s\n' "$CACHE_DIR"
