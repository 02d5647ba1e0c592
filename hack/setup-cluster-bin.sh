#!/usr/bin/env bash
# Prints the path of a folder holding the node binaries of the local cluster (hack/cluster.sh):
# kubelet, kube-scheduler, kube-proxy and a static `pause`, built from the same Debian
# kubernetes source package as the envtest binaries (hack/setup-envtest.sh) and cached beside
# them under ${NEXUS_CLUSTER_CACHE:-~/.cache/nexus/cluster}/bin-<version>/.
# Quiet on success (only the path goes to stdout); progress of a build goes to stderr.
# Only what the cache lacks is built. Builds share the envtest lock, so that two compilations
# of the Kubernetes tree never run at once, and the cache is filled atomically.
set -euo pipefail

K8S_VERSION="1.20.2"
CACHE_ROOT="${NEXUS_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/cluster}"
CACHE_DIR="$CACHE_ROOT/bin-$K8S_VERSION"
LOCK_ROOT="${NEXUS_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/envtest}"
GO_BINARIES=(kubelet kube-scheduler kube-proxy)
BINARIES=("${GO_BINARIES[@]}" pause)

log() { printf 'setup-cluster-bin: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/k8s-source.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/k8s-source.sh"

has_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$1/$b" ]] || return 1; done
  [[ -s "$1/pause.version" ]]
}

if has_all "$CACHE_DIR"; then
  printf '%s\n' "$CACHE_DIR"
  exit 0
fi

mkdir -p "$CACHE_ROOT" "$LOCK_ROOT"
exec 9>"$LOCK_ROOT/.lock"
if ! flock -n 9; then
  log "another build of Kubernetes binaries is running; waiting for it"
  flock 9
fi
if has_all "$CACHE_DIR"; then
  printf '%s\n' "$CACHE_DIR"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "building needs root for apt-get"
command -v apt-get >/dev/null || die "no apt-get: cannot build the node binaries here"
export DEBIAN_FRONTEND=noninteractive
log "building Kubernetes $K8S_VERSION node binaries from Debian sources (once; ~5 min)"
k8s_add_deb_src

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nexus-k8s-node-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
quiet() {
  local what="$1"; shift
  if ! "$@" >>"$WORK/steps.log" 2>&1; then
    tail -n 40 "$WORK/steps.log" >&2
    die "$what failed (log above)"
  fi
}

log "installing build dependencies"
quiet "apt-get update" apt-get update
quiet "apt-get install" apt-get install -y --no-install-recommends \
  golang-go rsync golang-github-modern-go-reflect2-dev make gcc libc6-dev
log "downloading the kubernetes source package"
k8s_unpack_patched_source src
cd src

# Dockershim gives every pod sandbox oom_score_adj -998 and the qos policy gives Guaranteed
# containers -997. Lowering oom_score_adj needs CAP_SYS_RESOURCE, which root lacks in some
# sandboxes and VMs; runc then fails every sandbox ("can't get final child's PID from pipe").
# A local test cluster loses nothing by leaving them at 0.
log "patching the kubelet's negative oom_score_adj values to 0"
sed -i 's/^\(\s*defaultSandboxOOMAdj\s*int\s*=\s*\)-998/\10/' pkg/kubelet/dockershim/docker_sandbox.go
sed -i 's/^\(\s*guaranteedOOMScoreAdj\s*int\s*=\s*\)-997/\10/' pkg/kubelet/qos/policy.go
grep -Eq 'defaultSandboxOOMAdj\s+int\s*=\s*0' pkg/kubelet/dockershim/docker_sandbox.go \
  || die "oom_score_adj patch of docker_sandbox.go failed"
grep -Eq 'guaranteedOOMScoreAdj\s+int\s*=\s*0' pkg/kubelet/qos/policy.go \
  || die "oom_score_adj patch of qos/policy.go failed"

missing=()
for b in "${GO_BINARIES[@]}"; do [[ -x "$CACHE_DIR/$b" ]] || missing+=("$b"); done
if ((${#missing[@]})); then
  what=""
  for b in "${missing[@]}"; do what+="cmd/$b "; done
  log "compiling ${missing[*]} (the slow step)"
  export HOME="${HOME:-/root}" CGO_ENABLED=0
  quiet "make" make WHAT="$what" GOLDFLAGS="-s -w"
fi

# The pod sandbox's init process, as the upstream build makes it (build/pause/Makefile).
pause_tag="$(sed -n 's/^TAG[[:space:]]*[?:]*=[[:space:]]*\([0-9][0-9.]*\).*/\1/p' build/pause/Makefile | head -n1)"
[[ -n "$pause_tag" ]] || die "cannot read the pause version from build/pause/Makefile"

log "compiling pause $pause_tag"
mkdir -p _output
quiet "gcc pause" gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-nexus" \
  -o _output/pause build/pause/linux/pause.c
strip _output/pause

staging="$CACHE_ROOT/.staging.$$"
rm -rf "$staging"
mkdir -p "$staging"
for b in "${GO_BINARIES[@]}"; do
  if [[ -x "_output/bin/$b" ]]; then cp "_output/bin/$b" "$staging/"; else cp "$CACHE_DIR/$b" "$staging/"; fi
done
cp _output/pause "$staging/pause"
printf '%s\n' "$pause_tag" >"$staging/pause.version"
has_all "$staging" || die "built binaries missing from $staging"
rm -rf "$CACHE_DIR"
mv "$staging" "$CACHE_DIR"
log "cached in $CACHE_DIR"
printf '%s\n' "$CACHE_DIR"
