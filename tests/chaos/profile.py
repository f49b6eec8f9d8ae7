"""Chaos profiles: ``ci`` (default, a few minutes with everything else) and ``long``.

``PDCORE_CHAOS_PROFILE=long pytest tests/chaos`` runs the 1,000-request soak.
"""

from __future__ import annotations

import os

NAME = os.environ.get("PDCORE_CHAOS_PROFILE", "ci").strip() or "ci"
if NAME not in ("ci", "long"):
    raise ValueError(f"PDCORE_CHAOS_PROFILE must be 'ci' or 'long', got {NAME!r}")
LONG = NAME == "long"

SEED = int(os.environ.get("PDCORE_CHAOS_SEED", "0"))
REQUESTS = 1000 if LONG else 320
CONCURRENCY = 8
# Share of the requests that get one injected fault (a proxy fault or a client abort):
# 16 in the ci profile, one of each kind.
FAULT_RATE = 0.05
ABORT_STORM = 200 if LONG else 50

# Process events, each once the given share of the soak's requests has finished:
# (share, action, role, seconds paused). One runs at a time; the load goes on.
_CI_EVENTS = [
    (0.10, "pause", "prefill", 3.0),
    (0.25, "pause", "decode", 2.0),
    (0.40, "kill", "decode", 0.0),
    (0.55, "kill", "router", 0.0),
    (0.70, "pause", "router", 2.0),
    (0.85, "kill", "prefill", 0.0),
]
_LONG_EVENTS = [
    (0.05, "pause", "prefill", 3.0),
    (0.12, "kill", "router", 0.0),
    (0.19, "pause", "decode", 2.0),
    (0.26, "kill", "decode", 0.0),
    (0.33, "pause", "router", 2.0),
    (0.40, "kill", "prefill", 0.0),
    (0.47, "pause", "prefill", 5.0),
    (0.54, "kill", "decode", 0.0),
    (0.61, "kill", "router", 0.0),
    (0.68, "pause", "decode", 4.0),
    (0.75, "kill", "prefill", 0.0),
    (0.82, "pause", "router", 3.0),
    (0.89, "kill", "decode", 0.0),
]
EVENTS = _LONG_EVENTS if LONG else _CI_EVENTS

FIGURES: dict = {}  # filled by the tests, printed at the end of the run (conftest.py)
