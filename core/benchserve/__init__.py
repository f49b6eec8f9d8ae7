"""``pdcore bench serving``: load a running server or router and measure it, like
SGLang's ``python -m sglang.bench_serving`` (TTFT, ITL, TPOT, E2E, throughput,
goodput; JSON and PNG plots). It talks HTTP only and imports nothing from the engine.
"""

from pdcore.benchserve.cli import run

__all__ = ["run"]
