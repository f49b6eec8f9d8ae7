"""What may fail in the soak: a request in flight when a process was killed, or a
stream whose answer an injected reset cut after it reached the client.

Every soak request that does not end ``ok`` (or ``aborted``, by the client's own
injected abort) must be accounted for. A process kill takes down whatever was in
flight: a request counts as in flight at a kill when its life (first attempt to
verdict, retries included) overlaps the kill's window, from the SIGKILL until the
restarted process is up plus ``STALE_S`` (a keep-alive connection or a health view
still pointing at the dead process).

Outside the kills only one injected fault can correctly fail a request: a reset of
decode's answer once SSE events were relayed to the client, which must end the
stream with an error event (``stream_error``). Everything else the router absorbs:
a cut or swallowed request, an answer cut before the client saw a byte, prefill's
answer (read whole before anything is relayed), every fault on the bootstrap hop
(the room fails before decode's answer starts, and the router retries the pair), a
delay, a slow link, a pause (the fault matrix checks the proxy faults one by one).
So a lost retry or an unabsorbed delay shows up as a failure with nothing to
explain it. A proxy fault hits the next matching exchange, which may belong to
another request than the one it was planned with, so the bound counts faults, not
requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAILED_KINDS = ("error", "stream_error", "router_gone")
# (injected fault key, the failure it may correctly cause outside a kill)
FAULT_THAT_MAY_FAIL = ("decode reset", "stream_error")
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
    decode_resets: int
    faults_injected: int
    outside_kills: list = field(default_factory=list)  # the failures outside every kill

    def explained(self) -> bool:
        """Every failure outside kills a stream a decode reset cut (at most one each),
        and all failures within the injected faults plus the requests in flight at kills."""
        _, failure = FAULT_THAT_MAY_FAIL
        return (
            all(o.kind == failure for o in self.outside_kills)
            and self.failed_otherwise <= self.decode_resets
            and self.failed <= self.faults_injected + self.in_flight_at_kills
        )

    def figures(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "outside_kills"}


def bound(outcomes, kills: list[Kill], injected: dict[str, int]) -> FailureBound:
    """``outcomes``: the soak's ``Outcome``s; ``injected``: faults that took effect,
    keyed ``"<proxy> <kind>"`` and ``"client abort"``."""

    def at_a_kill(o) -> bool:
        return any(k.overlaps(o.began, o.began + o.elapsed) for k in kills)

    failed = [o for o in outcomes if o.kind in FAILED_KINDS]
    at_kills = [o for o in failed if at_a_kill(o)]
    otherwise = [o for o in failed if not at_a_kill(o)]
    fault, _ = FAULT_THAT_MAY_FAIL
    return FailureBound(
        failed=len(failed),
        failed_in_flight_at_kills=len(at_kills),
        failed_otherwise=len(otherwise),
        in_flight_at_kills=sum(at_a_kill(o) for o in outcomes),
        decode_resets=injected.get(fault, 0),
        faults_injected=sum(n for key, n in injected.items() if key != "client abort"),
        outside_kills=otherwise,
    )
