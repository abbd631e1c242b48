#!/usr/bin/env bash
# One-time setup on a Debian 12 machine with Node 20, as root:
# system packages (runc, OCI and TPM tools, a C compiler for the launcher's exec helper),
# npm dependencies from the lockfile, the build (dist/), and the cached Redis and python-web
# test images.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(runc skopeo umoci swtpm swtpm-tools tpm2-tools redis-tools gcc libc6-dev ca-certificates openssl postgresql docker-registry apache2-utils chromium)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and runc needs root)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "› installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "› installing npm dependencies (npm ci; better-sqlite3 builds from source, ~1 min)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "› building (dist/)"
npm run --silent build

echo "› building the Redis and python-web test images from Debian packages (cached)"
bash scripts/build-test-image.sh redis >/dev/null
bash scripts/build-test-image.sh python-web >/dev/null
echo "✓ setup complete — next: npx cocoon demo"
