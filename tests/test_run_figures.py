"""The chaos figures and fuzz case counts that workers collect reach the end of the
run: the summary and the ``PDCORE_CHAOS_REPORT`` file read the same on two workers as
in one process (RELIABILITY.md quotes them)."""

from __future__ import annotations

import json

import pytest
from xdist_project import make_project, run_pytest

FILES = {
    "tests/chaos/test_soak.py": """
from chaos import profile

def test_soak():
    record("soak")
    profile.FIGURES["soak"] = {"requests": 320, "leaked_pages": 0}

def test_storm():
    record("storm")
    profile.FIGURES["abort storm"] = {"requests": 50, "hang": 0}
""",
    "tests/fuzz/test_hostile.py": """
from fuzz.case_counts import CASES

def test_hostile():
    record("hostile")
    CASES["test_hostile"] += 40
    CASES["test_schema"] += 30
""",
}


def summary(output: str) -> str:
    """From the chaos figures' header to the line before pytest's last line."""
    start = output.index("chaos figures")
    return output[start : output.rindex("\n", 0, output.rindex("passed"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(output, lines, report JSON) of the same tests with -n 2 and with -n 0."""
    root = make_project(tmp_path_factory.mktemp("figures"), FILES)
    got = {}
    for workers in ("2", "0"):
        report = root / f"chaos-{workers}.json"
        output, lines = run_pytest(root, "-n", workers, env={"PDCORE_CHAOS_REPORT": str(report)})
        got[workers] = output, lines, json.loads(report.read_text()) if report.exists() else None
    return got


def test_figures_come_from_two_workers(runs):
    output, lines, _ = runs["2"]
    workers = {line.split()[1] for line in lines}
    assert workers == {"gw0", "gw1"}, f"chaos and fuzz should have run apart:\n{output}"


def test_summary_on_two_workers_lists_chaos_figures_and_fuzz_cases(runs):
    output, _, _ = runs["2"]
    assert "chaos figures (ci profile)" in output and '"leaked_pages": 0' in output, (
        f"the chaos figures measured in a worker must be printed at the end:\n{output}"
    )
    assert "fuzz cases (ci profile): 70" in output and "test_hostile: 40" in output, (
        f"the fuzz case counts of a worker must be printed at the end:\n{output}"
    )


def test_summary_reads_the_same_on_two_workers_and_in_one_process(runs):
    two, one = summary(runs["2"][0]), summary(runs["0"][0])
    assert two == one, f"-n 2 printed:\n{two}\n-n 0 printed:\n{one}"


def test_chaos_report_file_is_the_same_on_two_workers(runs):
    two, one = runs["2"][2], runs["0"][2]
    assert one == {
        "profile": "ci",
        "soak": {"requests": 320, "leaked_pages": 0},
        "abort storm": {"requests": 50, "hang": 0},
    }, f"PDCORE_CHAOS_REPORT in one process: {one}"
    assert two == one, f"PDCORE_CHAOS_REPORT with -n 2: {two}, in one process: {one}"
