#!/usr/bin/env bash
# Builds an application test image as an OCI image layout from Debian packages — no Docker:
# `apt-get download` + `dpkg -x` into a root filesystem, then scripts/build-oci-image.ts
# (Cocoon's deterministic tar and layout writers) makes a one-layer image.
#
#   scripts/build-test-image.sh redis [OUTDIR]
#
# Default OUTDIR: ${COCOON_CACHE:-/var/cache/cocoon}/images/<name>. The build is skipped when
# OUTDIR holds a layout whose stamp matches the package versions. The last line of output is
# the layout path. Adding an image = one `image_<name>` function (see image_redis).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${COCOON_CACHE:-/var/cache/cocoon}"
STAMP_NAME=".cocoon-build-stamp"
SCRIPT_VERSION=1

log() { echo "› $*" >&2; }
die() { echo "build-test-image: $*" >&2; exit 1; }

# ---- shared steps --------------------------------------------------------------------------

# Candidate version of each package ("pkg=version" lines); refreshes apt lists once if needed.
package_versions() {
  local p v out=() refreshed=0
  for p in "$@"; do
    v="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if { [ -z "$v" ] || [ "$v" = "(none)" ]; } && [ "$refreshed" -eq 0 ]; then
      [ "$(id -u)" -eq 0 ] || die "no apt candidate for $p (run apt-get update as root)"
      log "apt-get update"
      apt-get update -qq >&2 || die "apt-get update failed"
      refreshed=1
      v="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    fi
    { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "package $p has no installable version"
    out+=("$p=$v")
  done
  printf '%s\n' "${out[@]}"
}

# Downloads the exact versions and extracts them into ROOTFS.
fetch_into_rootfs() {
  local rootfs="$1" debs="$2"; shift 2
  mkdir -p "$rootfs" "$debs"
  log "downloading ${#@} Debian packages"
  (cd "$debs" && apt-get download -qq "$@" >&2) || die "apt-get download failed (network?)"
  local deb
  for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$rootfs"
  done
}

# Every ELF under the given rootfs-relative dirs must resolve all its libraries inside ROOTFS.
check_libraries() {
  local rootfs="$1"; shift
  local libpath="$rootfs/lib/x86_64-linux-gnu:$rootfs/usr/lib/x86_64-linux-gnu:$rootfs/lib:$rootfs/usr/lib"
  local f missing=0 line lib path dir
  for dir in "$@"; do
    [ -d "$rootfs/$dir" ] || continue
    while IFS= read -r -d '' f; do
      head -c 4 "$f" 2>/dev/null | grep -q $'^\x7fELF' || continue
      while IFS= read -r line; do
        case "$line" in
          *"not found"*) echo "  $f: $line" >&2; missing=1 ;;
          *"=>"*)
            lib="$(awk '{print $1}' <<<"$line")"; path="$(awk '{print $3}' <<<"$line")"
            if [[ "$path" != "$rootfs"/* ]]; then echo "  $f: $lib resolved outside the rootfs ($path)" >&2; missing=1; fi ;;
        esac
      done < <(LD_LIBRARY_PATH="$libpath" ldd "$f" 2>/dev/null || true)
    done < <(find "$rootfs/$dir" -type f -print0)
  done
  [ -e "$rootfs/lib64/ld-linux-x86-64.so.2" ] || { echo "  dynamic loader missing" >&2; missing=1; }
  [ "$missing" -eq 0 ] || die "libraries missing from the image (add their packages)"
}

# /etc/passwd and /etc/group with root and one service user.
write_accounts() {
  local rootfs="$1" user="$2" uid="$3" home="$4"
  mkdir -p "$rootfs/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:%s:%s:%s:%s:/usr/sbin/nologin\n' "$user" "$uid" "$uid" "$user" "$home" >"$rootfs/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$rootfs/etc/group"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
  mkdir -p "$rootfs/root" && chmod 0700 "$rootfs/root"
  mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
}

# Drops what a container does not need from the extracted packages (docs, manpages, init files).
trim_rootfs() {
  local rootfs="$1"
  rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/share/locale" \
         "$rootfs/etc/init.d" "$rootfs/etc/logrotate.d" "$rootfs/lib/systemd" "$rootfs/usr/lib/systemd" "$rootfs/etc/systemd"
}

# Writes the OCI layout: SPEC is JSON for scripts/build-oci-image.ts.
make_layout() {
  local spec="$1"
  (cd "$REPO" && node --import tsx scripts/build-oci-image.ts "$spec") >&2 || die "writing the OCI layout failed"
}

# Runs BUILD_FN into a temp dir and moves the layout into OUT unless OUT is up to date.
build_cached() {
  local name="$1" out="$2" build_fn="$3"; shift 3
  local stamp
  stamp="$(printf 'image=%s\nscript=%s\n' "$name" "$SCRIPT_VERSION"; package_versions "$@")"
  if [ -f "$out/$STAMP_NAME" ] && [ -f "$out/index.json" ] && [ "$(cat "$out/$STAMP_NAME")" = "$stamp" ]; then
    log "$name: cached layout is up to date"
    echo "$out"
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  local work
  work="$(mktemp -d "$(dirname "$out")/.build-$name.XXXXXX")"
  chmod 0755 "$work" # apt-get download drops privileges to _apt
  trap 'rm -rf "$work"' EXIT
  local pinned=()
  mapfile -t pinned < <(sed -n 's/^\([^=]*\)=\(.*\)$/\1=\2/p' <<<"$stamp" | grep -v '^image=\|^script=')
  fetch_into_rootfs "$work/rootfs" "$work/debs" "${pinned[@]}"
  "$build_fn" "$work/rootfs" "$work/layout" "$work"
  printf '%s\n' "$stamp" >"$work/layout/$STAMP_NAME"
  rm -rf "$out.old"
  [ -e "$out" ] && mv "$out" "$out.old"
  mv "$work/layout" "$out"
  rm -rf "$out.old" "$work"
  trap - EXIT
  log "$name: built $out"
  echo "$out"
}

# ---- images --------------------------------------------------------------------------------

REDIS_PACKAGES=(redis-server redis-tools libc6 libgcc-s1 libjemalloc2 liblzf1 libssl3 libsystemd0 libcap2 libgcrypt20
  libgpg-error0 liblz4-1 liblzma5 libzstd1 libatomic1 libstdc++6)

build_redis() {
  local rootfs="$1" layout="$2" work="$3"
  trim_rootfs "$rootfs"
  [ -x "$rootfs/usr/bin/redis-server" ] || die "redis-server missing from the extracted packages"
  check_libraries "$rootfs" usr/bin usr/sbin
  write_accounts "$rootfs" redis 999 /data
  mkdir -p "$rootfs/data" && chmod 0755 "$rootfs/data"
  if [ "$(id -u)" -eq 0 ]; then
    chroot "$rootfs" /usr/bin/redis-server --version >&2 || die "redis-server does not start in the extracted root"
  fi
  cat >"$work/spec.json" <<EOF
{
  "rootfs": "$rootfs",
  "out": "$layout",
  "ref": "redis:7",
  "architecture": "amd64",
  "owners": { "data": [999, 999] },
  "config": {
    "Entrypoint": [],
    "Cmd": ["redis-server", "--protected-mode", "no"],
    "User": "redis",
    "WorkingDir": "/data",
    "ExposedPorts": { "6379/tcp": {} },
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
  }
}
EOF
  make_layout "$work/spec.json"
}

image_redis() {
  build_cached redis "${1:-$CACHE/images/redis-7}" build_redis "${REDIS_PACKAGES[@]}"
}

# ---- main ----------------------------------------------------------------------------------

[ "$(uname -m)" = "x86_64" ] || die "only x86_64 hosts are supported"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (Debian)"
image="${1:-}"
[ -n "$image" ] || die "usage: $0 <image> [OUTDIR]   (images: redis)"
fn="image_${image//-/_}"
declare -F "$fn" >/dev/null || die "unknown image '$image' (images: redis)"
"$fn" "${2:-}"
