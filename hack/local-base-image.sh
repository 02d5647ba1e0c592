#!/usr/bin/env bash
# Prints the path of a root-filesystem tarball that stands in for python:3.12-slim on a
# machine that can reach no container registry: Debian bookworm (debootstrap, minbase) with
# the libraries CPython's extension modules link against, plus a prebuilt CPython 3.12 copied
# to /opt/python3.12 (by default pyenv's). Import it with
#   docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' TARBALL nexus-local/python:3.12
# Cached under ${NEXUS_CLUSTER_CACHE:-~/.cache/nexus/cluster}/images/; built once, atomically.
set -euo pipefail

CACHE_ROOT="${NEXUS_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/cluster}"
PY_VERSION="${NEXUS_BASE_PYTHON_VERSION:-3.12.1}"
PY_SRC="${NEXUS_BASE_PYTHON:-${PYENV_ROOT:-$HOME/.pyenv}/versions/$PY_VERSION}"
SUITE=bookworm
OUT="$CACHE_ROOT/images/python-$PY_VERSION-$SUITE.tar"
# What lib-dynload/*.so and libpython need beyond minbase (tkinter is left out, as in -slim).
LIBS=ca-certificates,libbz2-1.0,libcrypt1,libexpat1,libffi8,liblzma5,libncursesw6,libnsl2,libreadline8,libsqlite3-0,libssl3,libtinfo6,libtirpc3,libuuid1,zlib1g

log() { printf 'local-base-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -s "$OUT" ]] && { printf '%s\n' "$OUT"; exit 0; }
mkdir -p "$CACHE_ROOT/images"
exec 8>"$CACHE_ROOT/images/.lock"
flock 8
[[ -s "$OUT" ]] && { printf '%s\n' "$OUT"; exit 0; }

[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
[[ -x "$PY_SRC/bin/python${PY_VERSION%.*}" ]] || die "no CPython $PY_VERSION at $PY_SRC (set NEXUS_BASE_PYTHON)"
command -v debootstrap >/dev/null || {
  log "installing debootstrap"
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
[[ -n "$mirror" ]] || mirror=http://deb.debian.org/debian

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nexus-base-image.XXXXXX")"
cleanup() {
  # debootstrap mounts /proc and /sys in the target while it runs; never leave them.
  local m
  for m in $(awk -v r="$WORK/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

log "debootstrap --variant=minbase $SUITE ($mirror; ~1 min)"
if ! debootstrap --variant=minbase --include="$LIBS" "$SUITE" "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi

log "copying CPython $PY_VERSION from $PY_SRC to /opt/python${PY_VERSION%.*}"
dest="/opt/python${PY_VERSION%.*}"
mkdir -p "$ROOTFS$dest"
# Without the test suite, static archives and IDLE/Tk; only pip in site-packages.
tar -C "$PY_SRC" -c \
  --exclude="./lib/python${PY_VERSION%.*}/test" \
  --exclude="./lib/python${PY_VERSION%.*}/idlelib" \
  --exclude="./lib/python${PY_VERSION%.*}/tkinter" \
  --exclude="./lib/python${PY_VERSION%.*}/turtledemo" \
  --exclude="./lib/python${PY_VERSION%.*}/site-packages" \
  --exclude='*.a' --exclude='_tkinter*.so' . | tar -C "$ROOTFS$dest" -x
sp="lib/python${PY_VERSION%.*}/site-packages"
mkdir -p "$ROOTFS$dest/$sp"
cp -a "$PY_SRC/$sp"/pip "$PY_SRC/$sp"/pip-*.dist-info "$ROOTFS$dest/$sp/"
# Scripts carry the interpreter's original path in their shebang.
grep -l -I "^#!$PY_SRC/bin/" "$ROOTFS$dest"/bin/* 2>/dev/null | while read -r f; do
  sed -i "1s|^#!$PY_SRC/bin/|#!$dest/bin/|" "$f"
done
# The binaries' RUNPATH names the original prefix: let the dynamic loader find libpython.
echo "$dest/lib" >"$ROOTFS/etc/ld.so.conf.d/python${PY_VERSION%.*}.conf"
chroot "$ROOTFS" /sbin/ldconfig
# The machine's own extra CAs (/usr/local/share/ca-certificates), so that pip inside image
# builds trusts what the machine trusts (a TLS-terminating proxy, for one); and pip told to use
# the system bundle rather than its vendored one.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" /usr/sbin/update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"

chroot "$ROOTFS" "$dest/bin/python${PY_VERSION%.*}" -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, venv, ensurepip' \
  || die "the copied CPython does not import its standard modules"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log \
  "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
tar --numeric-owner -C "$ROOTFS" -cf "$OUT.tmp.$$" .
mv "$OUT.tmp.$$" "$OUT"
log "cached $(du -h "$OUT" | cut -f1) in $OUT"
printf '%s\n' "$OUT"
