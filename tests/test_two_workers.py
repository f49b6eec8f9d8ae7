"""Plain ``pytest`` runs the suite on two workers; a module, and each serial group,
stays on one worker; ``-n 0`` and ``-p no:xdist`` still run everything in one process."""

from __future__ import annotations

from collections import defaultdict

import pytest
from xdist_project import make_project, run_pytest

FOUR_TESTS = """
import pytest

@pytest.mark.parametrize("i", range(4))
def test_one(i):
    record(f"{__name__}:{i}")
"""

FILES = {
    "tests/chaos/test_first.py": FOUR_TESTS,
    "tests/chaos/test_second.py": FOUR_TESTS,
    "tests/test_module_a.py": FOUR_TESTS,
    "tests/test_module_b.py": FOUR_TESTS,
}


def workers_by_module(lines: list[str]) -> dict[str, set[str]]:
    by_module = defaultdict(set)
    for line in lines:
        test, worker = line.split()
        by_module[test.split(":")[0]].add(worker)
    return by_module


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("two-workers"), FILES)


@pytest.fixture(scope="module")
def default_run(project):
    return run_pytest(project)


def test_plain_pytest_uses_two_workers(default_run):
    output, lines = default_run
    workers = {line.split()[1] for line in lines}
    assert len(lines) == 16, f"every test should run once:\n{output}"
    assert workers == {"gw0", "gw1"}, (
        f"plain `python -m pytest` (make test) should spread the tests over two workers, "
        f"got {workers}:\n{output}"
    )


def test_a_module_runs_on_one_worker(default_run):
    _, lines = default_run
    by_module = workers_by_module(lines)
    for module in ("test_module_a", "test_module_b"):
        assert len(by_module[module]) == 1, (
            f"{module} ran on {by_module[module]}: its module-scoped fixtures (a shared "
            "server) would start once per worker"
        )


def test_chaos_modules_run_on_the_same_worker(default_run):
    _, lines = default_run
    by_module = workers_by_module(lines)
    workers = by_module["test_first"] | by_module["test_second"]
    assert len(workers) == 1, (
        f"the chaos tests ran on {workers}: their failure bounds assume no other chaos "
        "test runs at the same time"
    )


@pytest.mark.parametrize("args", [("-n", "0"), ("-p", "no:xdist")], ids=" ".join)
def test_one_process_on_request(project, args):
    output, lines = run_pytest(project, *args)
    workers = {line.split()[1] for line in lines}
    assert len(lines) == 16 and workers == {"main"}, (
        f"pytest {' '.join(args)} should run every test in the main process, got {workers}:"
        f"\n{output}"
    )
