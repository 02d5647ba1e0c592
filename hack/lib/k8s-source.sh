# shellcheck shell=bash
# Sourced by the scripts that build Kubernetes binaries from Debian's own kubernetes source
# package (the control-plane binaries of envtest, and the node binaries of the local cluster).
# Needs: log, die and quiet from the caller; runs as root (apt-get).

# k8s_add_deb_src: make `apt-get source` work on a machine with only `deb` entries.
k8s_add_deb_src() {
  local list=/etc/apt/sources.list.d/nexus-deb-src.sources uri
  if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ || grep -qs '^deb-src' /etc/apt/sources.list 2>/dev/null; then
    return 0
  fi
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -n "$uri" ]] || uri="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [[ -n "$uri" ]] || die "cannot find the Debian mirror URI to add a deb-src entry"
  log "adding a deb-src entry for bookworm main ($uri)"
  cat >"$list" <<SRC
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

# k8s_unpack_patched_source DIR: download the kubernetes source package into the current
# folder and unpack it into DIR, with the vendored reflect2 replaced by Debian's fixed copy.
k8s_unpack_patched_source() {
  local dest="$1" orig
  quiet "apt-get source kubernetes" apt-get source --download-only kubernetes
  orig="$(ls kubernetes_*.orig.tar.* 2>/dev/null | head -n1)"
  [[ -n "$orig" ]] || die "no kubernetes orig tarball was downloaded"
  mkdir -p "$dest"
  tar -xf "$orig" -C "$dest" --strip-components=1 || die "cannot unpack $orig"
  [[ -d "$dest/vendor/github.com/modern-go/reflect2" ]] || die "unexpected source layout: no vendored reflect2"
  # reflect2 v1.0.1 breaks map iteration under Go >= 1.18 (apiserver segfault on the first
  # custom-resource write); Debian ships the fixed 1.0.2.
  log "patching vendored reflect2 to 1.0.2"
  rm -rf "$dest/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$dest/vendor/github.com/modern-go/reflect2"
  rm -f "$dest/vendor/github.com/modern-go/reflect2/go.mod"
  sed -i 's#^\(\# github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#; s#^\(github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#' \
    "$dest/vendor/modules.txt"
  grep -q 'modern-go/reflect2 v1.0.2' "$dest/vendor/modules.txt" || die "reflect2 patch of vendor/modules.txt failed"
}
