#!/usr/bin/env bash
# The test command (npm test): typecheck, lint, build, then every test file under test/.
# Tests that need root, runc or the shared TEE vectors skip with a visible message without them.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc --noEmit -p tsconfig.json
npx tsc --noEmit -p src/web/tsconfig.json
npx eslint --max-warnings=0 src test bench scripts
node scripts/build.mjs >/dev/null
mapfile -t files < <(find test -name '*.test.ts' | sort)
exec node --import tsx --test --test-reporter=spec --test-timeout=600000 "${files[@]}"
