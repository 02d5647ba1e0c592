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

SRC_LIST=/etc/apt/sources.list.d/nexus-deb-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list 2>/dev/null; then
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -n "$uri" ]] || uri="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [[ -n "$uri" ]] || die "cannot find the Debian mirror URI to add a deb-src entry"
  log "adding a deb-src entry for bookworm main ($uri)"
  cat >"$SRC_LIST" <<SRC
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

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
quiet "apt-get source kubernetes" apt-get source --download-only kubernetes
orig="$(ls kubernetes_*.orig.tar.* 2>/dev/null | head -n1)"
[[ -n "$orig" ]] || die "no kubernetes orig tarball was downloaded"
mkdir src
tar -xf "$orig" -C src --strip-components=1 || die "cannot unpack $orig"
cd src
[[ -d vendor/github.com/modern-go/reflect2 ]] || die "unexpected source layout: no vendored reflect2"

# reflect2 v1.0.1 breaks map iteration under Go >= 1.18 (apiserver segfault on the first
# custom-resource write); Debian ships the fixed 1.0.2.
log "patching vendored reflect2 to 1.0.2"
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod
sed -i 's#^\(\# github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#; s#^\(github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#' vendor/modules.txt
grep -q 'modern-go/reflect2 v1.0.2' vendor/modules.txt || die "reflect2 patch of vendor/modules.txt failed"

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
