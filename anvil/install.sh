#!/usr/bin/env bash
# Installs the pinned anvil (npm package @foundry-rs/anvil-linux-amd64, see package.json /
# package-lock.json) into anvil/node_modules if it is missing, and prints the absolute path of
# the binary as the only line on stdout; progress goes to stderr. Idempotent; runnable from any
# cwd. The one implementation of the install: `x402d dev` (src/dev/chain.rs) runs this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
if [ ! -f "$bin" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm is required to install anvil: apt-get install npm, or set ANVIL_BIN" >&2
    exit 1
  fi
  version="$(sed -n 's/.*"@foundry-rs\/anvil-linux-amd64": "\(.*\)".*/\1/p' "$here/package.json")"
  echo "anvil/install.sh: installing anvil ${version} (npm ci in $here, about 45 MB)…" >&2
  (cd "$here" && npm ci --no-audit --no-fund >&2)
  if [ ! -f "$bin" ]; then
    echo "anvil/install.sh: npm ci finished but $bin is missing" >&2
    exit 1
  fi
  echo "anvil/install.sh: installed $bin" >&2
fi
[ -x "$bin" ] || chmod +x "$bin"
echo "$bin"
