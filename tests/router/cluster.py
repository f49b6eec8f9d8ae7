"""Helpers for router tests over real servers: fixed ports, parallel start, router counters."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from e2e.pd_helpers import COMMON
from e2e.server_process import ServerProcess, free_port


class FixedPortServer(ServerProcess):
    """``ServerProcess`` on a given HTTP port (to restart a killed server at its address)."""

    def __init__(self, *args: str, port: int, timeout: float = 240.0, env: dict | None = None):
        super().__init__(*args, timeout=timeout, env=env, port=port)


def prefill_args(model: str, bootstrap_port: int) -> tuple[str, ...]:
    return (
        "--model-path", model, "--disaggregation-mode", "prefill",
        "--disaggregation-bootstrap-port", str(bootstrap_port),
        "--disaggregation-transfer-backend", "mooncake", *COMMON,
    )  # fmt: skip


def decode_args(model: str) -> tuple[str, ...]:
    return (
        "--model-path", model, "--disaggregation-mode", "decode",
        "--disaggregation-transfer-backend", "mooncake", *COMMON,
    )  # fmt: skip


def start_prefill(model: str, port: int | None = None, bootstrap_port: int | None = None):
    """A Mooncake prefill server; ``(server, bootstrap_port)``."""
    bootstrap_port = bootstrap_port or free_port()
    args = prefill_args(model, bootstrap_port)
    server = ServerProcess(*args) if port is None else FixedPortServer(*args, port=port)
    return server, bootstrap_port


def start_parallel(*factories) -> list:
    """Call every factory in its own thread (servers load at once); stop all if one fails."""
    with ThreadPoolExecutor(len(factories)) as pool:
        futures = [pool.submit(f) for f in factories]
    results, errors = [], []
    for fut in futures:
        try:
            results.append(fut.result())
        except BaseException as e:
            errors.append(e)
    if errors:
        for r in results:
            (r[0] if isinstance(r, tuple) else r).stop()
        raise errors[0]
    return results


_COUNTER = re.compile(r"^pdcore_router_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def request_counts(router) -> dict[str, float]:
    """Requests the router sent to each worker URL so far (its ``/metrics`` counter)."""
    counts: dict[str, float] = {}
    for line in router.get("/metrics").text.splitlines():
        m = _COUNTER.match(line)
        if m:
            labels = dict(_LABEL.findall(m["labels"]))
            counts[labels["worker"]] = counts.get(labels["worker"], 0.0) + float(m["value"])
    return counts


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(interval)


@contextmanager
def pd_router_cluster(model_path: str, *server_flags: str):
    """A prefill and a decode server (started at once) behind a PD router; yields
    ``(prefill, decode, router)`` and stops all three."""
    from e2e.server_process import ServerProcess, free_port
    from router.router_process import RouterProcess

    bootstrap = free_port()
    prefill, decode = start_parallel(
        lambda: ServerProcess(*prefill_args(model_path, bootstrap), *server_flags),
        lambda: ServerProcess(*decode_args(model_path), *server_flags),
    )
    router = None
    try:
        router = RouterProcess(
            "--pd-disaggregation", "--prefill", prefill.url, str(bootstrap),
            "--decode", decode.url,
        )  # fmt: skip
        yield prefill, decode, router
    finally:
        for proc in (router, decode, prefill):
            if proc is not None:
                proc.stop()
