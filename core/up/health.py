"""Is a pdcore process up? One HTTP probe, no retries: callers poll it."""

from __future__ import annotations

import httpx

POLL_S = 0.3


def responds(client: httpx.Client, url: str, timeout: float = 1.0) -> bool:
    """``GET url`` answered 200 (anything else, or nobody listening yet: not yet)."""
    try:
        return client.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def router_workers(client: httpx.Client, router_url: str) -> list[dict]:
    """The router's ``/list_workers`` entries, or [] while it cannot say."""
    try:
        r = client.get(f"{router_url}/list_workers", timeout=2.0)
        return list(r.json().get("workers", [])) if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return []


def workers_healthy(client: httpx.Client, router_url: str) -> bool:
    """The router answers and every worker it knows is healthy (at least one)."""
    if not responds(client, f"{router_url}/health"):
        return False
    workers = router_workers(client, router_url)
    return bool(workers) and all(w.get("healthy") for w in workers)


def address_in_use(output: str) -> bool:
    """Whether a process's output says it could not bind because the port was taken."""
    low = output.lower()
    return "address already in use" in low or "errno 98" in low or "eaddrinuse" in low
