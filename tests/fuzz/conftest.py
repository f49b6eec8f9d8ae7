"""Fuzz fixtures: one real tiny server for the session, and a count of the cases tried.

``cases`` counts every input a fuzz test sent, per test file; the counts are
printed at the end of the run (RELIABILITY.md quotes them).
"""

from __future__ import annotations

from collections import Counter

import pytest
from fuzz import profile
from fuzz.live_server import FuzzServer

CASES: Counter = Counter()


@pytest.fixture(scope="session")
def fuzz_server():
    server = FuzzServer()
    try:
        yield server
    finally:
        code, stderr = server.stop()
    assert code == 0, f"the server did not exit cleanly ({code}):\n{stderr[-3000:]}"


@pytest.fixture
def cases(request):
    """``cases()`` counts one case for this test's file."""
    name = request.node.path.stem

    def count(n: int = 1) -> None:
        CASES[name] += n

    return count


def pytest_terminal_summary(terminalreporter):
    if CASES:
        total = sum(CASES.values())
        terminalreporter.write_sep("-", f"fuzz cases ({profile.NAME} profile): {total}")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n}")
