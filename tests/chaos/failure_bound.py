"""What may fail in the soak: a request hit by an injected fault, or one in flight
when a process was killed.

Every soak request that does not end ``ok`` (or ``aborted``, by the client's own
injected abort) must be accounted for. A process kill takes down whatever was in
flight: a request counts as in flight at a kill when its life (first attempt to
verdict, retries included) overlaps the kill's window, from the SIGKILL until the
restarted process is up plus ``STALE_S`` (a keep-alive connection or a health view
still pointing at the dead process). Every other failure needs a proxy fault that
can fail a request: a reset, drop or blackhole (a delay or a slow link must be
absorbed by the router's retries and timeouts, so it excuses nothing). A proxy
fault hits the next matching exchange, which may belong to another request than
the one it was planned with, so the bound counts faults, not requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAILED_KINDS = ("error", "stream_error", "router_gone")
# Proxy faults after which a clear error can be the right answer (the request or its
# answer was cut, or swallowed, and the router cannot always tell whether to retry).
FAULTS_THAT_MAY_FAIL = ("reset", "drop", "blackhole")
STALE_S = 1.0


@dataclass(frozen=True)
class Kill:
    """A SIGKILL of ``role`` at ``start`` and its restart done at ``end`` (monotonic)."""

    role: str
    start: float
    end: float

    def overlaps(self, began: float, ended: float) -> bool:
        return began <= self.end + STALE_S and ended >= self.start


@dataclass
class FailureBound:
    """The soak's failures set against what may explain them."""

    failed: int
    failed_in_flight_at_kills: int
    failed_otherwise: int
    in_flight_at_kills: int
    faults_that_may_fail: int
    faults_injected: int
    unexplained: list = field(default_factory=list)  # failures outside every kill

    def figures(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "unexplained"}

    def explained(self) -> bool:
        """Failures outside kills within the faults that may fail a request; all
        failures within the injected faults plus the requests in flight at kills."""
        return (
            self.failed_otherwise <= self.faults_that_may_fail
            and self.failed <= self.faults_injected + self.in_flight_at_kills
        )


def bound(outcomes, kills: list[Kill], injected: dict[str, int]) -> FailureBound:
    """``outcomes``: the soak's ``Outcome``s; ``injected``: faults that took effect,
    keyed ``"<proxy> <kind>"`` (and ``"client abort"``)."""

    def at_a_kill(o) -> bool:
        return any(k.overlaps(o.began, o.began + o.elapsed) for k in kills)

    failed = [o for o in outcomes if o.kind in FAILED_KINDS]
    at_kills = [o for o in failed if at_a_kill(o)]
    may_fail = sum(
        n for key, n in injected.items() if key.rsplit(" ", 1)[-1] in FAULTS_THAT_MAY_FAIL
    )
    proxy_faults = sum(n for key, n in injected.items() if key != "client abort")
    return FailureBound(
        failed=len(failed),
        failed_in_flight_at_kills=len(at_kills),
        failed_otherwise=len(failed) - len(at_kills),
        in_flight_at_kills=sum(at_a_kill(o) for o in outcomes),
        faults_that_may_fail=may_fail,
        faults_injected=proxy_faults,
        unexplained=[o for o in failed if not at_a_kill(o)],
    )
