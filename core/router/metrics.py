"""The router's own Prometheus metrics, in a private registry (one per app).

Per-worker gauges (health, in-flight, load, KV rate) are set from the worker
pool at scrape time, so the request path pays nothing for them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "pdcore_router_"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RouterMetrics:
    def __init__(self):
        self.registry = reg = CollectorRegistry()
        labels = ["worker", "role"]
        self.requests = Counter(
            PREFIX + "requests", "Requests sent to a worker", labels, registry=reg
        )
        self.errors = Counter(
            PREFIX + "errors", "Failed requests to a worker", [*labels, "kind"], registry=reg
        )
        self.latency = Histogram(
            PREFIX + "request_latency_seconds",
            "Time until a worker's answer ended",
            labels,
            registry=reg,
            buckets=_BUCKETS,
        )
        self.retries = Counter(PREFIX + "retries", "Attempts retried on a new pair", registry=reg)
        self.healthy = Gauge(
            PREFIX + "worker_healthy",
            "1 if the worker's circuit admits requests",
            labels,
            registry=reg,
        )
        self.in_flight = Gauge(
            PREFIX + "worker_in_flight",
            "This router's requests on the worker now",
            labels,
            registry=reg,
        )
        self.load = Gauge(
            PREFIX + "worker_load",
            "In-flight requests plus the worker's reported running + waiting",
            labels,
            registry=reg,
        )
        self.kv_rate = Gauge(
            PREFIX + "worker_kv_transfer_gb_s",
            "KV bytes the worker sent per second between the last two health checks (GB/s)",
            labels,
            registry=reg,
        )

    def sent(self, worker) -> None:
        self.requests.labels(worker.url, worker.role).inc()

    def error(self, worker, kind: str) -> None:
        self.errors.labels(worker.url, worker.role, kind).inc()

    def observe(self, worker, seconds: float) -> None:
        self.latency.labels(worker.url, worker.role).observe(seconds)

    def render(self, workers) -> bytes:
        for gauge in (self.healthy, self.in_flight, self.load, self.kv_rate):
            gauge.clear()  # removed workers leave no stale series
        for w in workers:
            labels = (w.url, w.role)
            self.healthy.labels(*labels).set(1 if w.healthy else 0)
            self.in_flight.labels(*labels).set(w.in_flight)
            self.load.labels(*labels).set(w.load)
            self.kv_rate.labels(*labels).set(w.kv_rate.gb_s)
        return generate_latest(self.registry)
