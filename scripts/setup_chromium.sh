#!/usr/bin/env bash
# Headless Chromium for the test that renders the router's /dashboard (the test skips
# without it). Only `make test` installs it: `make demo` and `make setup` do not need it.
# apt output goes to $VENV/setup.log next to the main setup's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
mkdir -p "$VENV"
SETUP_LOG="$(cd "$VENV" && pwd)/setup.log"
# shellcheck source=scripts/setup_steps.sh
source scripts/setup_steps.sh

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
# --no-install-recommends: the browser alone, no desktop extras.
optional_step "chromium for the dashboard screenshot test (apt, ~120 MB)" \
  "the dashboard screenshot test will skip" apt_install chromium
