#!/usr/bin/env bash
# Installs the example plugin packages (used by the tests as third-party plugins would be).
set -euo pipefail
PIP=${1:-pip}
here=$(cd "$(dirname "$0")" && pwd)
for pkg in "$here"/*/; do
  if [ -f "$pkg/pyproject.toml" ]; then
    "$PIP" install --no-deps --no-build-isolation -e "$pkg"
  fi
done
