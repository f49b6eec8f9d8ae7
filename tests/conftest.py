"""Shared fixtures: a real install of the example third-party plugin."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
from helpers import install_example_plugin

# two_workers: the -n 2 default and test groups; run_figures: chaos/fuzz summaries.
pytest_plugins = ["pytester", "two_workers", "run_figures"]

TESTS = Path(__file__).parent


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
