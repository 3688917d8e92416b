#!/usr/bin/env bash
# Installs the pinned anvil (npm package @foundry-rs/anvil-linux-amd64, see package.json /
# package-lock.json) into anvil/node_modules if it is missing, and prints the absolute path of
# the binary as the only line on stdout. Idempotent; runnable from any cwd.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
if [ ! -f "$bin" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "anvil/install.sh: npm is required to install anvil (apt-get install npm)" >&2
    exit 1
  fi
  (cd "$here" && npm ci --no-audit --no-fund >&2)
  if [ ! -f "$bin" ]; then
    echo "anvil/install.sh: npm ci finished but $bin is missing" >&2
    exit 1
  fi
fi
[ -x "$bin" ] || chmod +x "$bin"
echo "$bin"
