"""Fuzz fixtures: one real tiny server for the session, and a count of the cases tried.

``cases`` counts every input a fuzz test sent, per test file, in
``fuzz.case_counts.CASES``; ``run_figures.py`` prints the counts at the end of the run
(RELIABILITY.md quotes them).
"""

from __future__ import annotations

import pytest
from fuzz.case_counts import CASES
from fuzz.live_server import FuzzServer


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
