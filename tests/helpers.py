"""Helpers shared by tests: running the CLI, installing the example plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


def install_example_plugin(target: Path) -> None:
    """``pip install`` the example plugin (a real wheel build) into ``target``.

    pip builds a local folder in place (setuptools writes build/ and *.egg-info
    there), so it builds a private copy: two test workers installing at once would
    otherwise share one build folder.
    """
    with tempfile.TemporaryDirectory(prefix="example-plugin-src-") as tmp:
        source = Path(tmp) / EXAMPLE_PLUGIN.name
        shutil.copytree(
            EXAMPLE_PLUGIN,
            source,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
        _pip_install(source, target)


def _pip_install(source: Path, target: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def run_cli(*args: str, env: dict | None = None, timeout: float = 120):
    """Run ``python -m pdcore ...`` in a fresh process; returns CompletedProcess."""
    full_env = dict(os.environ)
    if env is not None:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pdcore", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def write_plugin(site: Path, dist: str, module: str, source: str) -> None:
    """Install a one-module plugin into ``site`` as pip would lay it out (its
    module plus a ``dist-info`` with the ``pdcore`` entry point), without a build."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pdcore]\n{module} = {module}\n")
