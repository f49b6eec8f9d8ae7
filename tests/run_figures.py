"""The figures some suites print at the end of a run: chaos FIGURES and fuzz CASES.

The tests fill them in memory (``chaos.profile.FIGURES``, ``fuzz.case_counts.CASES``).
Under pytest-xdist those live in the worker processes, so each worker sends its own
to the controller when it finishes, and only the controller (or a run without
workers) prints them and writes ``PDCORE_CHAOS_REPORT``: the summary reads the same
with ``-n 2`` as with ``-n 0``. RELIABILITY.md quotes these lines.
"""

from __future__ import annotations

import json
import os

import pytest
from chaos import profile as chaos_profile
from fuzz.case_counts import CASES

WORKER_OUTPUT_KEY = "pdcore_run_figures"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_worker(session.config):
        session.config.workeroutput[WORKER_OUTPUT_KEY] = json.dumps(
            {"chaos": chaos_profile.FIGURES, "fuzz": dict(CASES)}
        )
        return
    path = os.environ.get("PDCORE_CHAOS_REPORT")
    if path and chaos_profile.FIGURES:
        with open(path, "w") as f:
            json.dump({"profile": chaos_profile.NAME, **chaos_profile.FIGURES}, f, indent=1)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent with -p no:xdist
def pytest_testnodedown(node, error) -> None:
    """On the controller: add a finished worker's figures to this process's."""
    sent = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
    if sent is None:  # the worker crashed before its session finished
        return
    figures = json.loads(sent)
    chaos_profile.FIGURES.update(figures["chaos"])
    CASES.update(figures["fuzz"])


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    if chaos_profile.FIGURES:
        terminalreporter.write_sep("-", f"chaos figures ({chaos_profile.NAME} profile)")
        terminalreporter.write_line(json.dumps(chaos_profile.FIGURES, indent=1))
    if CASES:
        from fuzz import profile as fuzz_profile  # imports Hypothesis: only when it ran

        total = sum(CASES.values())
        terminalreporter.write_sep("-", f"fuzz cases ({fuzz_profile.NAME} profile): {total}")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n}")
