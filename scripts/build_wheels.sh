#!/usr/bin/env bash
# Builds the wheels of pdcore and its five first-party plugins into dist/ (or the folder
# given as $1), offline: the build backend (setuptools) comes from the environment that
# `make setup` made, not from the network (--no-build-isolation).
#
# Each distribution is built from a clean copy of its sources, not in place: setuptools
# reuses an existing build/lib, so a file deleted from the checkout would otherwise stay
# in the wheel, and an in-place build leaves build/ and *.egg-info folders behind.
#
#   bash scripts/build_wheels.sh [OUT_DIR]      (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
PYTHON=${PYTHON:-${VENV:-.venv}/bin/python}
DISTS=(. plugins/cuda plugins/ascend plugins/transfer_ascend plugins/transfer_mooncake
  plugins/transfer_nixl)

if ! "$PYTHON" -c 'import setuptools' 2>/dev/null; then
  echo "[wheels] $PYTHON has no setuptools; run 'make setup' first (or set PYTHON=...)" >&2
  exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/pdcore-wheels.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# Tests, caches and build leftovers stay out of the copy (and so out of the wheels).
tar -c --exclude=__pycache__ --exclude='*.egg-info' --exclude=build --exclude=tests \
  pyproject.toml README.md core plugins | tar -x -C "$STAGE"

echo "[wheels] building ${#DISTS[@]} wheels into $OUT"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$OUT" "${DISTS[@]/#/$STAGE/}"
for d in "${DISTS[@]}"; do
  name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$d/pyproject.toml" | head -1)
  ls "$OUT/${name//-/_}"-*.whl
done
echo "[wheels] install them with: pip install $OUT/*.whl"
