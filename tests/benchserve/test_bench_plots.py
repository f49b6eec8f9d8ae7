"""`pdcore bench serving --plot-dir`: the PNGs are written and their paths printed, and
the latency CDFs mark p50/p90/p99 and the SLOs passed with --slo-ttft-ms/--slo-tpot-ms."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from benchserve.stub_server import StubServer

from pdcore.benchserve import plots
from pdcore.benchserve.cli import run

pytest.importorskip("matplotlib")
SLO_TTFT, SLO_TPOT = 500, 50


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    """One run against the stub with plots and both SLOs: (report, stderr, plot dir)."""
    folder = tmp_path_factory.mktemp("bench")
    out, plot_dir = folder / "report.json", folder / "plots"
    stub = StubServer()
    argv = ["--base-url", stub.url, "--num-prompts", "6", "--random-input-len", "12"]
    argv += ["--random-output-len", "5", "--warmup-requests", "0", "--disable-progress"]
    argv += ["--slo-ttft-ms", str(SLO_TTFT), "--slo-tpot-ms", str(SLO_TPOT)]
    argv += ["--output-file", str(out), "--plot-dir", str(plot_dir)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            assert run(argv) == 0
    finally:
        stub.stop()
    return json.loads(out.read_text()), err.getvalue(), plot_dir


def test_plot_files_are_written_and_their_paths_printed(plotted):
    report, err, plot_dir = plotted
    expected = [str(plot_dir / plots.LATENCY_PNG), str(plot_dir / plots.THROUGHPUT_PNG)]
    assert report["plots"] == expected, "the JSON lists the PNGs it wrote"
    for path in expected:
        assert (plot_dir / path.rsplit("/", 1)[1]).stat().st_size > 0, f"{path} not written"
        assert f"wrote plot {path}" in err, f"the user must be told where {path} went:\n{err}"


def panel_labels(report) -> dict[str, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plots.latency_cdfs(plt, report)
    try:
        return {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in fig.axes}
    finally:
        plt.close(fig)


def test_every_latency_cdf_marks_p50_p90_p99(plotted):
    report, _, _ = plotted
    labels = panel_labels(report)
    for panel, (key, _) in plots.PANELS.items():
        stats = report["latency_ms"][key]
        for q in ("p50", "p90", "p99"):
            want = f"{q} {stats[q]:.1f} ms"
            assert want in labels[panel], f"{panel} must mark {want}: {labels[panel]}"


def test_slo_lines_are_drawn_on_the_panels_they_limit(plotted):
    report, _, _ = plotted
    labels = panel_labels(report)
    assert f"SLO {SLO_TTFT} ms" in labels["TTFT"], labels["TTFT"]
    assert f"SLO {SLO_TPOT} ms" in labels["TPOT"], labels["TPOT"]
    for panel in ("ITL", "E2E latency"):
        assert not any(x.startswith("SLO") for x in labels[panel]), f"no SLO limits {panel}"
