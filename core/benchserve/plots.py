"""PNG plots of a report: latency CDFs (p50/p90/p99 and the --slo-* limits marked) and
throughput over time.

matplotlib is imported only here and only when plots are asked for, with the Agg
backend (no display needed); ``require()`` lets the CLI fail before a long run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pdcore.errors import ConfigError

LATENCY_PNG = "latency_cdf.png"
THROUGHPUT_PNG = "throughput.png"


def require() -> None:
    """Raise a ``--plot-dir`` error naming the missing package if matplotlib is absent."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(
            "--plot-dir", "plots need matplotlib, which is not installed: pip install matplotlib"
        )


def write_plots(report: dict, folder: str | Path) -> list[str]:
    """Write both PNGs into ``folder`` (created if needed); their paths."""
    require()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = _title(report)
    paths = []
    for name, draw in ((LATENCY_PNG, latency_cdfs), (THROUGHPUT_PNG, _throughput)):
        fig = draw(plt, report)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        paths.append(str(folder / name))
    return paths


def _title(report: dict) -> str:
    c = report["config"]
    rate = c["request_rate"]
    conc = c["max_concurrency"] or "unlimited"
    return (
        f"{c['backend']} @ {c['base_url']} - {c['dataset_name']}, {c['num_prompts']} prompts, "
        f"rate {rate} req/s, max concurrency {conc}"
    )


# CDF panel title -> (key in the report's latency_ms, the config key of its SLO).
PANELS = {
    "TTFT": ("ttft", "slo_ttft_ms"),
    "TPOT": ("tpot", "slo_tpot_ms"),
    "ITL": ("itl", None),
    "E2E latency": ("e2e", None),
}
PERCENTILE_STYLE = {"p50": "C2", "p90": "C1", "p99": "C3"}


def latency_cdfs(plt, report: dict):
    """One CDF per metric, from the per-request values in the report, with its
    p50/p90/p99 (dotted) and the SLO passed with ``--slo-*`` (dashed) marked."""
    ok = [r for r in report["requests"] if r["success"]]
    series = {
        "TTFT": [r["ttft_ms"] for r in ok],
        "TPOT": [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None],
        "ITL": [gap for r in ok for gap in r["itl_ms"]],
        "E2E latency": [r["e2e_ms"] for r in ok],
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, values) in zip(axes.flat, series.items(), strict=True):
        ax.set_title(name)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
        if not values:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = sorted(values)
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=name)
        ax.set_ylim(0, 1.02)
        _mark_percentiles_and_slo(ax, report, name)
    return fig


def _mark_percentiles_and_slo(ax, report: dict, panel: str) -> None:
    key, slo_key = PANELS[panel]
    stats = report["latency_ms"][key]
    for stat, color in PERCENTILE_STYLE.items():
        if stats.get(stat) is not None:
            value = stats[stat]
            ax.axvline(value, color=color, linestyle=":", label=f"{stat} {value:.1f} ms")
    slo = report["config"].get(slo_key) if slo_key else None
    if slo is not None:
        ax.axvline(slo, color="black", linestyle="--", label=f"SLO {slo:g} ms")
    ax.legend(fontsize=7, loc="lower right")


def _throughput(plt, report: dict):
    t = report["timeline"]
    width = t["bin_s"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.bar(t["t_s"], t["output_tokens_per_s"], width=width, align="edge")
    top.set_ylabel("output tokens/s")
    bottom.bar(t["t_s"], t["completed_requests_per_s"], width=width, align="edge", color="C1")
    bottom.set_ylabel("completed requests/s")
    bottom.set_xlabel("seconds since the first request")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return fig
