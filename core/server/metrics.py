"""Prometheus metrics of one server, in their own registry (one per app).

Names follow SGLang's (``sglang:`` prefix) so existing dashboards and the
router's scrapers work unchanged. Engine gauges are refreshed on each scrape;
PD servers add their queue, transfer and failure metrics (``pd_metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pdcore.engine.io_struct import EngineStats
from pdcore.server.pd_metrics import PDCollector

PREFIX = "sglang:"
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip


class ServerMetrics:
    def __init__(self, model_name: str = "default"):
        self.registry = CollectorRegistry()
        reg, p, labels = self.registry, PREFIX, ["model_name"]

        def histogram(name, doc, buckets):
            return Histogram(p + name, doc, labels, registry=reg, buckets=buckets).labels(
                model_name
            )

        def counter(name, doc):
            return Counter(p + name, doc, labels, registry=reg).labels(model_name)

        def gauge(name, doc):
            return Gauge(p + name, doc, labels, registry=reg).labels(model_name)

        self.ttft = histogram(
            "time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS
        )
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds", "End-to-end request latency.", _LATENCY_BUCKETS
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Output tokens generated.")
        self.cached_tokens = counter("cached_tokens", "Prompt tokens served from the cache.")
        self.requests = counter("num_requests", "Requests finished.")
        self.running = gauge("num_running_reqs", "Requests running in the engine.")
        self.waiting = gauge("num_queue_reqs", "Requests waiting in the engine.")
        self.token_usage = gauge("token_usage", "Fraction of KV pages in use.")
        self.kv_free = gauge("kv_pages_free", "Free KV pages.")
        self.kv_used = gauge("kv_pages_used", "KV pages held by requests.")
        self.kv_cached = gauge("kv_pages_cached", "KV pages held only by the prefix cache.")
        self.pd = PDCollector(p, model_name)  # PD queues, transfers, failures (PD modes only)
        reg.register(self.pd)

    def observe_tokens(self, count: int, now: float, created: float, previous: float | None):
        """Record ``count`` tokens arriving at ``now``; ``previous``: the last arrival."""
        if count <= 0:
            return
        self.generation_tokens.inc(count)
        if previous is None:
            self.ttft.observe(now - created)
            count, previous = count - 1, now
        for _ in range(count):
            self.itl.observe((now - previous) / count)

    def observe_finish(self, state) -> None:
        self.requests.inc()
        self.prompt_tokens.inc(state.prompt_tokens)
        self.cached_tokens.inc(state.cached_tokens)
        self.e2e.observe(state.e2e_latency)

    def observe_engine(self, stats: EngineStats) -> None:
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_free.set(stats.free_pages)
        self.kv_used.set(stats.used_pages)
        self.kv_cached.set(stats.cached_pages)
        self.token_usage.set(stats.used_pages / stats.total_pages if stats.total_pages else 0.0)
        self.pd.update(stats)

    def render(self) -> bytes:
        return generate_latest(self.registry)
