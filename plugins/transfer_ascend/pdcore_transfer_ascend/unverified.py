"""The note the ``ascend`` transfer row of ``pdcore plugins`` carries until it has run on NPUs."""

from __future__ import annotations

from pdcore.hookspecs import Availability

UNVERIFIED = "never run on Ascend hardware: checked only against CPU fakes of mf_adapter"


def noted(avail: Availability) -> Availability:
    """``avail`` with the note appended to its reason (availability itself unchanged)."""
    reason = f"{avail.reason} [{UNVERIFIED}]" if avail.reason else f"[{UNVERIFIED}]"
    return Availability(avail.ok, reason)
