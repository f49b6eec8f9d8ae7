"""A throwaway pytest project that loads the suite's own two_workers and run_figures
plugins, run in a subprocess: what the suite does on several workers, seen from outside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
pytest_plugins = ["two_workers", "run_figures"]
"""

# Each test appends "<test id> <worker>" to $RAN_ON: which worker ran it.
RECORD = """
import os

def record(name):
    with open(os.environ["RAN_ON"], "a") as f:
        f.write(f"{name} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")
"""


def make_project(root: Path, files: dict[str, str]) -> Path:
    """``files``: test files by path under ``root``, each given ``record``."""
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(CONFTEST)
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(RECORD + body)
    return root


def run_pytest(root: Path, *args: str, env: dict | None = None) -> tuple[str, list[str]]:
    """Runs ``python -m pytest`` in ``root``; returns (output, lines "<test> <worker>")."""
    ran_on = root / "ran_on.txt"
    ran_on.unlink(missing_ok=True)
    outer = ("PYTEST_", "PDCORE_CHAOS_", "PDCORE_FUZZ_")  # this run's workers and profiles
    clean = {k: v for k, v in os.environ.items() if not k.startswith(outer)}
    clean.update(env or {}, RAN_ON=str(ran_on))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=clean,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pytest {' '.join(args)} failed:\n{output}"
    return output, ran_on.read_text().split("\n")[:-1] if ran_on.exists() else []
