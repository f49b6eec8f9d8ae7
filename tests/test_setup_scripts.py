"""What `make setup`, `make demo` and `make test` tell the user: one line per setup step
with its duration (pip/apt noise in a log), the log's tail on failure, Chromium only for
the tests, and how to get ``pdcore`` on PATH afterwards.

``scripts/setup.sh`` runs for real here, against fake ``python3``, ``apt-get`` and
``ldconfig`` that record their calls: no download, well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
# Real tools the setup scripts use; nothing else of the machine is on the fake PATH (so
# an installed chromium or apt-get cannot change what the scripts do).
REAL_TOOLS = (
    *("bash", "sh", "env", "id", "dirname", "mkdir", "chmod"),
    *("cat", "sed", "tail", "grep", "wc"),
)

FAKE_PYTHON = """#!/bin/sh
# python3 / VENV/bin/python: records its arguments. `-m venv DIR` makes DIR/bin with this
# fake and a fake pdcore script; `-c CODE` runs the real interpreter (the next-steps text).
echo "python $*" >>"$CALLS"
case "$1 $2" in
  "-m venv")
    mkdir -p "$3/bin"
    cat "$0" >"$3/bin/python"
    printf '#!/bin/sh\\necho "pdcore 0.1.0"\\n' >"$3/bin/pdcore"
    chmod +x "$3/bin/python" "$3/bin/pdcore" ;;
  "-m pip")
    echo "Collecting noise from pip"
    echo "pip warning noise" >&2
    case "$*" in *"$FAIL_ON"*) echo "ERROR: No matching distribution found"; exit 1 ;; esac ;;
  "--version "*) echo "Python 3.11.0" ;;
  "-c "*) exec "$REAL_PYTHON" "$@" ;;
esac
exit 0
"""
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >>"$CALLS"
echo "Selecting previously unselected package noise"
"""


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in REAL_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    fakes = {
        "python3": FAKE_PYTHON,
        "apt-get": FAKE_APT,
        "ldconfig": "#!/bin/sh\n",  # no libibverbs: the setup installs it
        "sudo": '#!/bin/sh\nexec "$@"\n',  # for a CI user that is not root
    }
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_setup(fake_bin: Path, tmp_path: Path, **env: str):
    """Runs scripts/setup.sh into tmp_path/venv; returns (CompletedProcess, recorded calls)."""
    calls = tmp_path / "calls"
    calls.touch()
    full_env = {
        "PATH": str(fake_bin),
        "HOME": str(tmp_path),
        "VENV": str(tmp_path / "venv"),
        "CALLS": str(calls),
        "REAL_PYTHON": sys.executable,
        "FAIL_ON": "no-such-package",
        **env,
    }
    proc = subprocess.run(
        [str(fake_bin / "bash"), str(SCRIPTS / "setup.sh")],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, calls.read_text()


def test_setup_says_up_front_how_long_it_takes_and_what_it_downloads(fake_bin, tmp_path):
    proc, _ = run_setup(fake_bin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert re.search(r"minutes", first) and re.search(r"\d+(\.\d+)? (GB|MB)", first), (
        f"the first line must say roughly how long the setup takes and how much it downloads: "
        f"{first!r}"
    )


def test_setup_prints_one_line_per_step_with_its_duration(fake_bin, tmp_path):
    proc, _ = run_setup(fake_bin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [line for line in proc.stdout.splitlines() if " ... " in line]
    assert any(line.startswith("[setup] torch") for line in steps), proc.stdout
    for line in steps:
        assert re.fullmatch(r"\[setup\] .+ \.\.\. done in \d+ s", line), (
            f"each step says what it does and how long it took: {line!r}"
        )


def test_setup_keeps_pip_and_apt_output_in_the_log(fake_bin, tmp_path):
    proc, _ = run_setup(fake_bin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = proc.stdout + proc.stderr
    assert "noise" not in shown, f"pip/apt/dpkg output must not reach the terminal:\n{shown}"
    log = (tmp_path / "venv" / "setup.log").read_text()
    assert "Collecting noise from pip" in log and "pip warning noise" in log, log
    assert "Selecting previously unselected package noise" in log, log


def test_setup_ends_with_how_to_put_pdcore_on_path_and_start_it(fake_bin, tmp_path):
    proc, _ = run_setup(fake_bin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    activate = f"source {(tmp_path / 'venv').resolve() / 'bin' / 'activate'}"
    assert activate in proc.stdout, (
        f"after setup pdcore is not on PATH; the end must say '{activate}':\n{proc.stdout}"
    )
    tail = proc.stdout[proc.stdout.index(activate) :]
    assert re.search(r"^  pdcore up ", tail, re.M), f"then 'pdcore up':\n{proc.stdout}"


def test_failed_setup_step_shows_the_log_tail_and_its_path(fake_bin, tmp_path):
    proc, calls = run_setup(fake_bin, tmp_path, FAIL_ON="torch==")
    assert proc.returncode != 0, "a failed install must fail the setup (and make)"
    assert re.search(r"\[setup\] torch .* \.\.\. FAILED after \d+ s", proc.stdout), proc.stdout
    assert "ERROR: No matching distribution found" in proc.stdout, (
        f"the user must see why it failed without opening the log:\n{proc.stdout}"
    )
    assert "Selecting previously unselected" not in proc.stdout, (
        f"the tail shown is the failed step's own output, not an earlier step's:\n{proc.stdout}"
    )
    assert str(tmp_path / "venv" / "setup.log") in proc.stdout, "the message names the log"
    assert "-e ." not in calls, "no step may run after a failed one"


def test_setup_installs_no_browser_unless_asked(fake_bin, tmp_path):
    proc, calls = run_setup(fake_bin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chromium" not in calls, (
        f"make setup / make demo must not download a browser they do not use:\n{calls}"
    )


def test_setup_with_chromium_installs_it_through_apt(fake_bin, tmp_path):
    proc, calls = run_setup(fake_bin, tmp_path, WITH_CHROMIUM="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^apt-get install .*--no-install-recommends chromium$", calls, re.M), calls
    assert re.search(r"^\[setup\] chromium .* \.\.\. done in \d+ s$", proc.stdout, re.M), (
        proc.stdout
    )


def make_plan(target: str, tmp_path: Path) -> str:
    """The commands ``make TARGET`` would run for a venv that does not exist yet."""
    proc = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_installs_chromium_and_make_demo_does_not(tmp_path):
    test_plan, demo_plan = make_plan("test", tmp_path), make_plan("demo", tmp_path)
    assert "scripts/setup_chromium.sh" in test_plan, (
        f"CI runs make test on a clean machine; the dashboard test needs Chromium:\n{test_plan}"
    )
    assert "scripts/setup.sh" in demo_plan and "chromium" not in demo_plan.lower(), (
        f"make demo sets up pdcore without the test-only browser:\n{demo_plan}"
    )


def load_demo():
    spec = importlib.util.spec_from_file_location("pdcore_demo_script", SCRIPTS / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the tests run outside a virtualenv")
def test_demo_ends_with_how_to_put_pdcore_on_path_and_query_it(monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.chdir(ROOT)
    text = load_demo().next_steps()
    activate = re.search(r"source (\S+)/bin/activate", text)
    assert activate, f"outside the venv pdcore is not on PATH; say how to get it:\n{text}"
    assert (ROOT / activate.group(1)).resolve() == Path(sys.prefix).resolve(), (
        f"the activate command must name this virtualenv ({sys.prefix}):\n{text}"
    )
    up = re.search(r"^  pdcore up ", text, re.M)
    assert up and up.start() > activate.start(), f"then pdcore up:\n{text}"
    assert "curl http://127.0.0.1:30000/v1/chat/completions" in text, (
        f"say how to send a request to the router pdcore up starts:\n{text}"
    )


def test_setup_installs_every_test_tool_of_the_dev_extra():
    """`make test` runs in the venv setup.sh makes, not from `pip install .[dev]`: a tool
    missing there (pytest-xdist runs the suite on two workers) breaks CI only."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    setup = (SCRIPTS / "setup.sh").read_text()
    missing = [req for req in dev["dev"] if req not in setup]
    assert not missing, f"scripts/setup.sh does not install these dev requirements: {missing}"
