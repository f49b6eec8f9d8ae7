"""Whether the router can route: what ``/health`` and ``/readiness`` answer, and what the
startup line says.

Ready means every role has a confirmed worker (one that answered a health check or a
request, and whose circuit is not open): in PD mode a prefill and a decode, otherwise
one regular worker. sgl-router's ``/readiness`` has the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdcore.router.workers import WorkerPool


@dataclass
class Readiness:
    ready: bool
    message: str  # what is missing ("" when ready)
    workers: dict  # role -> {"healthy": n, "total": n}

    def body(self) -> dict:
        return {"status": "ready" if self.ready else "not_ready", "workers": self.workers}


def readiness(pool: WorkerPool, roles: tuple[str, ...]) -> Readiness:
    counts, missing = {}, []
    for role in roles:
        workers = pool.of_role(role)
        healthy = [w for w in workers if w.confirmed]
        counts[role] = {"healthy": len(healthy), "total": len(workers)}
        if healthy:
            continue
        if not workers:
            missing.append(f"no {role} worker registered")
            continue
        errors = [f"{w.url}: {w.last_error}" for w in workers if w.last_error]
        why = f"; last error {errors[0]}" if errors else "; not checked yet"
        missing.append(f"no healthy {role} worker (0 of {len(workers)}{why})")
    return Readiness(not missing, "; ".join(missing), counts)
