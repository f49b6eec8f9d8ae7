"""How hard the fuzz tests try: ``PDCORE_FUZZ_PROFILE=ci`` (default) or ``long``.

``ci`` is derandomized (the same cases every run, so a red CI is reproducible)
and sized to finish in well under a minute per test file on 2 cores; ``long``
draws fresh random cases each run (Hypothesis keeps failures in .hypothesis/)
and tries about ten times as many.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

NAME = os.environ.get("PDCORE_FUZZ_PROFILE", "ci")
if NAME not in ("ci", "long"):
    raise ValueError(f"PDCORE_FUZZ_PROFILE must be 'ci' or 'long', got {NAME!r}")
LONG = NAME == "long"

# Examples per test (per API operation for the schema-driven test).
SCHEMA_EXAMPLES = 300 if LONG else 30
HTTP_EXAMPLES = 400 if LONG else 40
CONTROL_EXAMPLES = 1000 if LONG else 100


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for a fuzz test: no deadline (2 busy cores), no shrinking
    limits beyond Hypothesis's own, derandomized in the ci profile."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=not LONG,
        database=None if not LONG else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
