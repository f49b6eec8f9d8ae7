"""The GPU bench scripts can be read on a machine without a GPU: each imports cleanly
and answers ``--help``, and the HF peer's step time is a median, not an extreme run."""

from __future__ import annotations

import sys

import pytest
from benchscripts.bench_modules import ROOT, load_script

GPU_SCRIPTS = sorted(
    p.name for p in (ROOT / "bench/gpu").glob("*.py") if '__name__ == "__main__"' in p.read_text()
)


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_gpu_script_imports_and_answers_help_without_a_gpu(script, monkeypatch, capsys):
    module = load_script(f"bench/gpu/{script}")
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0, f"{script} --help must exit 0 on a machine without a GPU"
    assert "usage:" in capsys.readouterr().out, f"{script} --help printed no usage"


def test_hf_step_is_the_median_of_its_estimates():
    hf_decode = load_script("bench/gpu/hf_decode.py")
    got = hf_decode.report([0.030, 0.021, 0.055, 0.024, 0.022])
    assert got["step_ms"] == pytest.approx(24.0), "median of five, not the slowest or fastest"
    assert got["reduced_by"] == "median"
    assert len(got["estimates_ms"]) == 5, "every estimate stays in the JSON"
