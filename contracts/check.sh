#!/usr/bin/env bash
# Rebuilds the artifacts into a temp dir and checks they equal the committed contracts/out.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp/out" >/dev/null
if ! diff -r "$here/out" "$tmp/out"; then
  echo "check.sh: contracts/out is stale: the artifacts differ from a fresh build of contracts/src." >&2
  echo "check.sh: run contracts/build.sh and commit contracts/out." >&2
  exit 1
fi
echo "check.sh: contracts/out matches a fresh build"
