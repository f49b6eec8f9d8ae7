"""The six wheels (pdcore and its first-party plugins), built offline from the checkout
by ``scripts/build_wheels.sh`` and installed into a fresh environment, work like the
editable checkout: same files, same console script, same ``pdcore plugins`` rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
# source folder -> (wheel file prefix, import package, the package's folder in the checkout)
DISTRIBUTIONS = {
    ".": ("pdcore", "pdcore", "core"),
    "plugins/cuda": ("pdcore_cuda", "pdcore_cuda", "plugins/cuda/pdcore_cuda"),
    "plugins/ascend": ("pdcore_ascend", "pdcore_ascend", "plugins/ascend/pdcore_ascend"),
    "plugins/transfer_ascend": (
        "pdcore_transfer_ascend",
        "pdcore_transfer_ascend",
        "plugins/transfer_ascend/pdcore_transfer_ascend",
    ),
    "plugins/transfer_mooncake": (
        "pdcore_transfer_mooncake",
        "pdcore_transfer_mooncake",
        "plugins/transfer_mooncake/pdcore_transfer_mooncake",
    ),
    "plugins/transfer_nixl": (
        "pdcore_transfer_nixl",
        "pdcore_transfer_nixl",
        "plugins/transfer_nixl/pdcore_transfer_nixl",
    ),
}


def clean_env() -> dict[str, str]:
    """The test session's environment without PYTHONPATH (other fixtures put the example
    plugin and tests/ there), so both sides see only what is installed."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Source folder -> its wheel, as ``make wheels`` builds them (no network)."""
    out = tmp_path_factory.mktemp("dist")
    env = {**clean_env(), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_wheels.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"building the wheels failed:\n{proc.stdout}\n{proc.stderr}"
    found = {}
    for folder, (prefix, _, _) in DISTRIBUTIONS.items():
        matches = sorted(out.glob(f"{prefix}-*-py3-none-any.whl"))
        assert len(matches) == 1, f"expected one pure-Python wheel of {folder}, got {matches}"
        found[folder] = matches[0]
    return found


@pytest.fixture(scope="module")
def fresh_venv(wheels, tmp_path_factory) -> Path:
    """A new virtualenv holding only the six wheels. The checkout venv's dependencies
    (torch, fastapi, the transfer engines) are reachable through a .pth path line; its
    editable pdcore is not, since a path line does not run that folder's .pth files."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    assert made.returncode == 0, f"python -m venv failed: {made.stderr}"
    python = venv / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv)
    deps = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "checkout-dependencies.pth").write_text(deps + "\n")
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            *wheels.values(),
        ],
        cwd=venv.parent,
        timeout=180,
    )
    assert installed.returncode == 0, f"pip install of the wheels failed: {installed.stderr}"
    return venv


def package_files(package_dir: Path) -> set[str]:
    """Every file of a package folder (Python or not), as paths relative to it."""
    return {
        p.relative_to(package_dir).as_posix()
        for p in package_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    }


@pytest.mark.parametrize("folder", list(DISTRIBUTIONS))
def test_wheel_holds_every_file_of_its_package(wheels, folder):
    _, package, source = DISTRIBUTIONS[folder]
    with zipfile.ZipFile(wheels[folder]) as whl:
        names = whl.namelist()
    in_wheel = {n.removeprefix(f"{package}/") for n in names if n.startswith(f"{package}/")}
    missing = package_files(ROOT / source) - in_wheel
    assert not missing, (
        f"{wheels[folder].name} lacks {sorted(missing)} from {source}/: a subpackage missing "
        "from [tool.setuptools] packages, or a data file kind missing from package-data"
    )


def test_pdcore_wheel_marks_the_package_as_typed(wheels):
    with zipfile.ZipFile(wheels["."]) as whl:
        names = whl.namelist()
    assert "pdcore/py.typed" in names, (
        "plugins type-check against pdcore's API only if the wheel ships py.typed (PEP 561)"
    )


def test_pdcore_wheel_declares_the_console_script_and_pytest_plugin(wheels):
    with zipfile.ZipFile(wheels["."]) as whl:
        [name] = [n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = whl.read(name).decode()
    assert "[console_scripts]\npdcore = pdcore.cli:main" in entry_points, entry_points
    assert "[pytest11]\npdcore = pdcore.testing.pytest_plugin" in entry_points, entry_points


def test_fresh_install_imports_every_package_from_the_wheels(fresh_venv):
    packages = [package for _, package, _ in DISTRIBUTIONS.values()]
    code = "import importlib, sys\n"
    code += "for p in sys.argv[1:]: print(importlib.import_module(p).__file__)"
    proc = run([fresh_venv / "bin" / "python", "-c", code, *packages], cwd=fresh_venv)
    assert proc.returncode == 0, f"importing the installed packages failed: {proc.stderr}"
    for package, path in zip(packages, proc.stdout.split(), strict=True):
        assert Path(path).is_relative_to(fresh_venv), (
            f"{package} was imported from {path}, not from the wheel installed in {fresh_venv}: "
            "the test would check the editable checkout, not the wheels"
        )


def test_fresh_install_lists_the_same_plugins_as_the_checkout(fresh_venv, tmp_path):
    installed = run([fresh_venv / "bin" / "pdcore", "plugins", "--json"], cwd=tmp_path)
    editable = run([sys.executable, "-m", "pdcore", "plugins", "--json"], cwd=tmp_path)
    assert editable.returncode == 0, f"pdcore plugins failed in the checkout: {editable.stderr}"
    assert installed.returncode == 0, f"the installed pdcore script failed: {installed.stderr}"
    assert json.loads(installed.stdout) == json.loads(editable.stdout), (
        "pdcore plugins from the wheels must list the same backends, providers and "
        f"availability as the editable checkout:\n{installed.stdout}\nvs\n{editable.stdout}"
    )
