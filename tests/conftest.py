"""Shared fixtures: a real install of the example third-party plugin, CLI runners."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent
EXAMPLE_PLUGIN = TESTS / "example_plugin"


def install_example_plugin(target: Path) -> None:
    """``pip install`` the example plugin (a real wheel build) into ``target``."""
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
            str(EXAMPLE_PLUGIN),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory):
    """A site directory holding the installed example plugin, put on sys.path.

    The plugin is installed into its own directory (not the shared virtualenv) so
    that other tests can also see pdcore without it, as after ``pip uninstall``.
    Spawned child processes find it through PYTHONPATH.
    """
    site = tmp_path_factory.mktemp("example-site")
    install_example_plugin(site)
    sys.path.insert(0, str(site))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(TESTS), old]))
    importlib.invalidate_caches()
    from pdcore.registry import reset_registry

    reset_registry()
    yield site
    sys.path.remove(str(site))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
    reset_registry()


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
