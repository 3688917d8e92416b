#!/usr/bin/env bash
# Builds contracts/out/*.json from contracts/src/*.sol with the pinned solcjs.
# Usage: contracts/build.sh [outDir]   (runnable from any cwd)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v node >/dev/null 2>&1; then
  echo "build.sh: node is required (apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -f "$here/node_modules/solc/package.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "build.sh: npm is required to install solc (apt-get install npm)" >&2
    exit 1
  fi
  (cd "$here" && npm ci --no-audit --no-fund >&2)
fi
exec node "$here/build.js" "$@"
