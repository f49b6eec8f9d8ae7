"""Every (method, path) an app serves, for tests that must cover all routes.

FastAPI 0.16x keeps included routers as nested entries of ``app.routes`` (its
public ``iter_route_contexts`` flattens them); older ones copy the routes in.
"""

from __future__ import annotations

import re

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI < 0.160: app.routes is already flat

    def iter_route_contexts(routes):
        return iter(routes)


def route_calls(app) -> list[tuple[str, str]]:
    """(method, path) of every route of ``app``, path parameters filled in with ``x``."""
    calls = []
    for route in iter_route_contexts(app.routes):
        if route.path is None:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        calls += [(method, path) for method in sorted(route.methods or {"GET"})]
    return calls
