"""How many inputs the fuzz tests sent, per test file (printed at the end of the run)."""

from __future__ import annotations

from collections import Counter

CASES: Counter = Counter()
