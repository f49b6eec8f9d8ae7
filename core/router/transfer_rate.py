"""A worker's recent KV transfer rate, from the byte counter its health checks report.

Why from the counter: prefill's ``/get_server_info`` already carries the KV
manager's cumulative ``bytes_transferred``, and the router polls it anyway, so
the rate costs nothing on the request path: bytes between two polls over the
time between them.
"""

from __future__ import annotations

import time
from collections import deque

HISTORY = 120  # samples kept for the dashboard's sparkline


class TransferRate:
    def __init__(self, history: int = HISTORY, clock=time.monotonic, wall=time.time):
        self.clock, self.wall = clock, wall
        self.gb_s = 0.0
        self.history: deque[tuple[float, float]] = deque(maxlen=history)  # (unix time, GB/s)
        self._last: tuple[float, int] | None = None

    def update(self, total_bytes: int) -> float:
        """Feed the worker's cumulative byte count; returns the rate since the last one."""
        now = self.clock()
        last, self._last = self._last, (now, total_bytes)
        if last is None or now <= last[0]:
            return self.gb_s
        moved = total_bytes - last[1]
        # A smaller count means the worker restarted: its new total is what it moved since.
        moved = total_bytes if moved < 0 else moved
        self.gb_s = moved / (now - last[0]) / 1e9
        self.history.append((round(self.wall(), 3), self.gb_s))
        return self.gb_s
