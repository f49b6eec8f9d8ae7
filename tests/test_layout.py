"""The monorepo layout promised by ARCHITECTURE.md §1 and the README."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {
    "cuda": ("pdcore-cuda", "pdcore_cuda", "cuda"),
    "ascend": ("pdcore-ascend", "pdcore_ascend", "ascend"),
    "transfer_mooncake": ("pdcore-transfer-mooncake", "pdcore_transfer_mooncake", "mooncake"),
    "transfer_nixl": ("pdcore-transfer-nixl", "pdcore_transfer_nixl", "nixl"),
    "transfer_ascend": ("pdcore-transfer-ascend", "pdcore_transfer_ascend", "ascend-transfer"),
}


def load(path: Path) -> dict:
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("folder", list(PLUGINS))
def test_plugin_folder_is_its_own_distribution(folder):
    dist, package, _ = PLUGINS[folder]
    meta = load(ROOT / "plugins" / folder / "pyproject.toml")
    assert meta["project"]["name"] == dist
    assert "pdcore" in meta["project"]["dependencies"]
    entry_points = meta["project"]["entry-points"]["pdcore"]
    assert len(entry_points) == 1, "one entry point per plugin distribution"
    assert next(iter(entry_points.values())) == f"{package}.plugin"
    assert (ROOT / "plugins" / folder / package / "plugin.py").is_file()


@pytest.mark.parametrize("folder", list(PLUGINS))
def test_root_extra_installs_the_plugin(folder):
    dist, _, extra = PLUGINS[folder]
    extras = load(ROOT / "pyproject.toml")["project"]["optional-dependencies"]
    assert dist in extras[extra], f"pdcore[{extra}] must install {dist}"
    assert extra in extras["all"][0], f"pdcore[all] must include {extra}"


def test_entry_point_names_are_unique_across_plugins():
    names = [
        next(
            iter(load(ROOT / "plugins" / f / "pyproject.toml")["project"]["entry-points"]["pdcore"])
        )
        for f in PLUGINS
    ]
    assert len(set(names)) == len(names), f"duplicate entry-point names: {names}"


def test_import_package_pdcore_is_the_core_folder():
    meta = load(ROOT / "pyproject.toml")
    assert meta["project"]["name"] == "pdcore"
    assert meta["tool"]["setuptools"]["package-dir"] == {"pdcore": "core"}
    packages = set(meta["tool"]["setuptools"]["packages"])
    on_disk = {
        "pdcore" + ("." + ".".join(p.parent.relative_to(ROOT / "core").parts)).rstrip(".")
        for p in (ROOT / "core").rglob("__init__.py")
    }
    assert on_disk <= packages, f"packages missing from pyproject: {on_disk - packages}"


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "make test"
    assert "make test" in (ROOT / "README.md").read_text()
