"""With the real torch-npu and mf-adapter wheels but no CANN, ``pdcore plugins`` says why
the Ascend rows cannot run, precisely, and that they never ran on Ascend hardware.

The wheels are unpacked outside the virtualenv (``scripts/setup.sh`` puts them in
``$VENV/ascend-wheels``; ``PDCORE_ASCEND_WHEELS`` overrides) and put on PYTHONPATH
of a ``pdcore plugins --json`` subprocess only: installed, torch_npu registers a
torch device-backend entry point that makes a plain ``import torch`` fail on a
machine without CANN unless ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pdcore_ascend.unverified import UNVERIFIED as NPU_NOTE
from pdcore_transfer_ascend.unverified import UNVERIFIED as MF_NOTE

WHEELS = Path(os.environ.get("PDCORE_ASCEND_WHEELS") or Path(sys.prefix) / "ascend-wheels")
LIBHCCL = "libhccl.so: cannot open shared object file: No such file or directory"

pytestmark = pytest.mark.skipif(
    not ((WHEELS / "torch_npu").is_dir() and (WHEELS / "mf_adapter").is_dir()),
    reason=f"the real torch-npu / mf-adapter wheels are not unpacked in {WHEELS}",
)


def plugin_rows(**env) -> dict[tuple[str, str], dict]:
    environ = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    environ.update(PYTHONPATH=str(WHEELS), **env)
    out = subprocess.run(
        [sys.executable, "-m", "pdcore.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert out.stdout, out.stderr[-2000:]
    return {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def rows():
    return plugin_rows(TORCH_DEVICE_BACKEND_AUTOLOAD="0")


def test_npu_platform_names_the_missing_cann_library(rows):
    row = rows[("platform", "npu")]
    assert (row["available"], row["detail"]) == ("no", f"torch_npu: {LIBHCCL} [{NPU_NOTE}]")


def test_ascend_attention_inherits_the_platform_reason(rows):
    row = rows[("attention", "ascend")]
    assert row["detail"] == f"needs an Ascend NPU: torch_npu: {LIBHCCL} [{NPU_NOTE}]"


def test_ascend_transfer_names_the_driver_and_the_cann_library(rows):
    row = rows[("transfer", "ascend")]
    assert row["available"] == "no"
    assert row["detail"] == (
        "mf_adapter: Ascend driver does not support mf: LD_LIBRARY_PATH is not set, so "
        "memfabric cannot find the driver (source /usr/local/Ascend/ascend-toolkit/set_env.sh); "
        f"torch_npu not importable: {LIBHCCL}; the ascend engine moves NPU memory [{MF_NOTE}]"
        "; data plane unauthenticated: keep on a private network"
    )


def test_the_rest_of_pdcore_is_unaffected(rows):
    assert rows[("platform", "cpu")]["available"] == "yes"
    assert rows[("attention", "torch")]["available"] == "yes"


def test_with_torch_autoload_pdcore_plugins_still_reports_the_npu_row():
    """The wheel's autoload breaks torch itself; the table still comes out and says so."""
    row = plugin_rows()[("platform", "npu")]
    assert row["available"] == "no"
    assert row["detail"].startswith("torch_npu: RuntimeError: ")
