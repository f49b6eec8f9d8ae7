"""Plots of ``pd_vs_colocated.py``'s JSON, written next to it (CPU only, matplotlib).

* ``<stem>_itl_p99.png``: p99 inter-token latency vs achieved request throughput;
* ``<stem>_ttft_p99.png``: p99 time to first token vs achieved request throughput;
* ``<stem>_goodput.png``: goodput under the JSON's SLOs vs offered request rate
  (with the ideal goodput = rate as a dashed line).

One line per configuration; points are labelled with their offered rate.

``python bench/gpu/plot_pd_vs_colocated.py [bench/gpu/results/pd_vs_colocated.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "pd_vs_colocated.json"
STYLE = {
    "pd": {"color": "tab:blue", "marker": "o", "label": "PD 1P1D"},
    "colocated": {"color": "tab:orange", "marker": "s", "label": "2x colocated"},
    "conditional": {"color": "tab:green", "marker": "^", "label": "conditional PD"},
}


def series(doc: dict, name: str) -> list[dict]:
    """The config's results as points sorted by offered rate (failed rates left out)."""
    results = (doc.get("configs", {}).get(name) or {}).get("results", {})
    points = []
    for key, r in results.items():
        lat = r.get("latency_ms") or {}
        good = r.get("goodput") or {}
        points.append(
            {
                "rate": float(r.get("request_rate", key)),
                "throughput": r.get("request_throughput"),
                "itl_p99": (lat.get("itl") or {}).get("p99"),
                "ttft_p99": (lat.get("ttft") or {}).get("p99"),
                "goodput": good.get("request_goodput"),
            }
        )
    return sorted(points, key=lambda p: p["rate"])


def _title(doc: dict, what: str) -> str:
    cards = (doc.get("host") or {}).get("cards") or []
    card = cards[0] if cards else "CPU"
    model = (doc.get("model") or {}).get("architecture", "?")
    w = doc.get("workload") or {}
    inp, out = w.get("input_tokens") or {}, w.get("output_tokens") or {}
    lens = f"in {inp.get('min')}-{inp.get('max')}, out {out.get('min')}-{out.get('max')} tokens"
    smoke = " [CPU smoke]" if doc.get("cpu_smoke") else ""
    return f"{what}{smoke}\n{model} on {len(cards) or 1}x {card}; {lens}"


def _plot(doc: dict, path: Path, x_key: str, y_key: str, xlabel: str, ylabel: str, what: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    top = 0.0
    for name, style in STYLE.items():
        pts = [p for p in series(doc, name) if p[x_key] is not None and p[y_key] is not None]
        if not pts:
            continue
        xs, ys = [p[x_key] for p in pts], [p[y_key] for p in pts]
        ax.plot(xs, ys, **style, linewidth=1.8)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(
                f"{p['rate']:g}/s", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        drawn += 1
        top = max(top, *xs)
    if y_key == "goodput" and drawn:
        ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="ideal (goodput = rate)")
    slo = doc.get("slo") or {}
    if y_key == "goodput":
        ylabel += f" (TTFT <= {slo.get('ttft_ms'):g} ms, TPOT <= {slo.get('tpot_ms'):g} ms)"
    if y_key == "ttft_p99" and slo.get("ttft_ms"):
        ax.axhline(slo["ttft_ms"], color="grey", linestyle=":", linewidth=0.8, label="TTFT SLO")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_title(doc, what), fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(json_path: str | Path) -> list[Path]:
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    stem = json_path.with_suffix("")
    thr = "achieved request throughput (req/s)"
    return [
        _plot(doc, Path(f"{stem}_itl_p99.png"), "throughput", "itl_p99", thr,
              "p99 ITL (ms)", "p99 inter-token latency vs throughput"),
        _plot(doc, Path(f"{stem}_ttft_p99.png"), "throughput", "ttft_p99", thr,
              "p99 TTFT (ms)", "p99 time to first token vs throughput"),
        _plot(doc, Path(f"{stem}_goodput.png"), "rate", "goodput",
              "offered request rate (req/s)", "goodput (req/s)", "goodput vs request rate"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("json", nargs="?", default=str(DEFAULT_JSON))
    args = ap.parse_args(argv)
    for path in plot_all(args.json):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
