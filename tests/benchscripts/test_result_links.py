"""BENCHMARKS.md and README.md cite only files that exist, and every result file kept
under bench/ is cited from BENCHMARKS.md, so superseded runs cannot pile up unexplained
(earlier runs live in git history and in BENCHMARKS.md's history table)."""

from __future__ import annotations

import re

import pytest
from benchscripts.bench_modules import ROOT

PATH = re.compile(r"bench/[A-Za-z0-9_./-]+")
RESULT_FOLDERS = ("bench/results", "bench/gpu/results")


def cited(doc: str) -> set[str]:
    """Every ``bench/...`` path written in ``doc`` (links, code spans, prose)."""
    text = (ROOT / doc).read_text()
    return {m.rstrip(".,;:)") for m in PATH.findall(text)}


@pytest.mark.parametrize("doc", ["BENCHMARKS.md", "README.md"])
def test_every_cited_bench_path_exists(doc):
    missing = sorted(p for p in cited(doc) if not (ROOT / p).exists())
    assert not missing, f"{doc} cites files that do not exist (deleted or renamed?): {missing}"


def test_every_result_file_is_cited_from_benchmarks_md():
    paths = cited("BENCHMARKS.md")
    # A cited folder covers its files (a log folder), but not a whole results folder.
    folders = {p.rstrip("/") for p in paths if p.endswith("/")} - set(RESULT_FOLDERS)
    orphans = []
    for folder in RESULT_FOLDERS:
        for f in sorted((ROOT / folder).rglob("*")):
            rel = f.relative_to(ROOT).as_posix()
            parents = {q.as_posix() for q in f.relative_to(ROOT).parents}
            if f.is_file() and rel not in paths and not parents & folders:
                orphans.append(rel)
    assert not orphans, (
        f"result files no section of BENCHMARKS.md cites: {orphans}; cite each current "
        "result, or delete superseded ones and keep their numbers in the history table"
    )
