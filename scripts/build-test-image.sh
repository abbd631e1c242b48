#!/usr/bin/env bash
# Builds an application test image as an OCI image layout from Debian packages — no Docker:
# `apt-get download` + `dpkg -x` into a root filesystem, then scripts/build-oci-image.ts
# (Cocoon's deterministic tar and layout writers) makes a one-layer image.
#
#   scripts/build-test-image.sh redis|python-web [OUTDIR]
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

# Candidate version of each package ("pkg=version" lines, in argument order); refreshes the
# apt lists once if one has none. One apt-cache call for all: each call loads the whole cache.
package_versions() {
  local -A cand=()
  local p v
  candidates() {
    cand=()
    while IFS='=' read -r p v; do cand["$p"]="$v"; done < <(apt-cache policy "$@" 2>/dev/null |
      awk '/^[^ ].*:$/ {pkg = substr($0, 1, length($0) - 1)} /^  Candidate:/ {print pkg "=" $2}')
  }
  candidates "$@"
  for p in "$@"; do
    v="${cand[$p]:-}"
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
      [ "$(id -u)" -eq 0 ] || die "no apt candidate for $p (run apt-get update as root)"
      log "apt-get update"
      apt-get update -qq >&2 || die "apt-get update failed"
      candidates "$@"
      break
    fi
  done
  for p in "$@"; do
    v="${cand[$p]:-}"
    { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "package $p has no installable version"
    printf '%s=%s\n' "$p" "$v"
  done
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
  # STAMP_EXTRA (optional): anything else the image depends on, e.g. a hash of files it bakes in
  stamp="$(printf 'image=%s\nscript=%s\n' "$name" "$SCRIPT_VERSION"; [ -z "${STAMP_EXTRA:-}" ] || printf 'extra=%s\n' "$STAMP_EXTRA"; package_versions "$@")"
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
  mapfile -t pinned < <(sed -n 's/^\([^=]*\)=\(.*\)$/\1=\2/p' <<<"$stamp" | grep -v '^image=\|^script=\|^extra=')
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

# A small Python HTTP app that reaches Redis in plaintext on a local port — in the mTLS tests
# that port is the launcher's tls.egress proxy (docs/tls.md). Only the interpreter, the pure-
# Python standard library and the extension modules whose libraries ship here (libc, expat,
# zlib, OpenSSL) are kept; extension modules needing anything else are removed.
PYTHON_WEB_PACKAGES=(python3-minimal python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libssl3)
PYTHON_WEB_UID=1000

# The app baked into the image as /app/app.py (its hash is part of the cache stamp).
python_web_app() {
  cat <<'PY'
"""python-web: a tiny HTTP app for Cocoon's mTLS tests (scripts/build-test-image.sh).

GET /        -> {"app": "python-web", ...}
GET /redis   -> AUTH (if REDIS_PASSWORD), PING, SET KEY VALUE, GET KEY over a plain TCP socket to
                REDIS_ADDR (the launcher's egress proxy); ?key=…&value=… choose the pair.
Env: PORT (8080), BIND (127.0.0.1), REDIS_ADDR (127.0.0.1:6380), REDIS_PASSWORD (optional).
"""
import json
import os
import signal
import socket
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RedisError(Exception):
    pass


def resp_command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("connection closed by the server (no reply)")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    raise RedisError("unexpected reply %r" % line[:40])


def redis_roundtrip(addr, password, key, value):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        f = s.makefile("rb")
        steps = []
        if password:
            steps.append(("AUTH", password))
        steps += [("PING",), ("SET", key, value), ("GET", key)]
        replies = []
        for cmd in steps:
            s.sendall(resp_command(*cmd))
            replies.append(read_reply(f))
        return {"ping": replies[-3], "set": replies[-2], "key": key, "value": replies[-1], "auth": bool(password)}


class Handler(BaseHTTPRequestHandler):
    server_version = "python-web/1"

    def reply(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/":
            self.reply(200, {"app": "python-web", "uid": os.getuid(), "redis": os.environ.get("REDIS_ADDR", "127.0.0.1:6380")})
        elif url.path == "/redis":
            addr = os.environ.get("REDIS_ADDR", "127.0.0.1:6380")
            try:
                result = redis_roundtrip(addr, os.environ.get("REDIS_PASSWORD", ""), q.get("key", "python-web"), q.get("value", "hello at %d" % int(time.time())))
                self.reply(200, result)
            except (OSError, RedisError, ValueError) as e:
                self.reply(502, {"error": "redis at %s: %s" % (addr, e)})
        else:
            self.reply(404, {"error": "not found"})


def main():
    port = int(os.environ.get("PORT", "8080"))
    httpd = ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("python-web listening on %s:%d as uid %d" % (httpd.server_address[0], port, os.getuid()), file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
PY
}

build_python_web() {
  local rootfs="$1" layout="$2" work="$3"
  trim_rootfs "$rootfs"
  [ -x "$rootfs/usr/bin/python3.11" ] || die "python3.11 missing from the extracted packages"
  local py="$rootfs/usr/lib/python3.11"
  # extension modules whose libraries are not in the image (and test modules)
  local m
  for m in _bz2 _crypt _ctypes _ctypes_test _curses _curses_panel _dbm _lzma _sqlite3 _uuid nis readline \
           _testbuffer _testcapi _testclinic _testimportmultiple _testinternalcapi _testmultiphase \
           _xxsubinterpreters _xxtestfuzz xxlimited xxlimited_35 audioop ossaudiodev; do
    rm -f "$py/lib-dynload/$m".cpython-311-*.so
  done
  rm -rf "$py/test" "$py/pydoc_data" "$py/lib2to3" "$py/idlelib" "$py/turtledemo" "$py/tkinter" "$py/ensurepip" \
         "$py/sqlite3" "$py/curses" "$py/dbm" "$py/turtle.py" "$rootfs/usr/share/python3" "$rootfs/usr/lib/x86_64-linux-gnu/gconv"
  check_libraries "$rootfs" usr/bin usr/lib/python3.11/lib-dynload
  write_accounts "$rootfs" web "$PYTHON_WEB_UID" /app
  mkdir -p "$rootfs/app" && chmod 0755 "$rootfs/app"
  python_web_app >"$rootfs/app/app.py" && chmod 0644 "$rootfs/app/app.py"
  if [ "$(id -u)" -eq 0 ]; then
    chroot "$rootfs" /usr/bin/python3 -c 'import sys; sys.path.insert(0, "/app"); import app, json, socket, urllib.request, http.server; print("python", sys.version.split()[0], "ok")' >&2 \
      || die "python3 cannot import the app in the extracted root"
  fi
  cat >"$work/spec.json" <<EOF
{
  "rootfs": "$rootfs",
  "out": "$layout",
  "ref": "python-web:1",
  "architecture": "amd64",
  "config": {
    "Entrypoint": [],
    "Cmd": ["python3", "/app/app.py"],
    "User": "web",
    "WorkingDir": "/app",
    "ExposedPorts": { "8080/tcp": {} },
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=8080", "BIND=127.0.0.1",
            "REDIS_ADDR=127.0.0.1:6380", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"]
  }
}
EOF
  make_layout "$work/spec.json"
}

image_python_web() {
  STAMP_EXTRA="app-$(python_web_app | sha256sum | cut -c1-16)" \
    build_cached python-web "${1:-$CACHE/images/python-web}" build_python_web "${PYTHON_WEB_PACKAGES[@]}"
}

# ---- main ----------------------------------------------------------------------------------

[ "$(uname -m)" = "x86_64" ] || die "only x86_64 hosts are supported"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (Debian)"
image="${1:-}"
[ -n "$image" ] || die "usage: $0 <image> [OUTDIR]   (images: redis, python-web)"
fn="image_${image//-/_}"
declare -F "$fn" >/dev/null || die "unknown image '$image' (images: redis, python-web)"
"$fn" "${2:-}"
