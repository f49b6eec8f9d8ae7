"""A plain-text progress bar on stderr (no tqdm): redrawn in place on a terminal,
a line per tenth of the run in a log file, so CI logs stay short."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_S = 0.1


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = self.failed = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_tenth = -1

    def update(self, success: bool) -> None:
        self.done += 1
        self.failed += not success
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= REDRAW_S or self.done == self.total:
                self.last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        elif (tenth := self.done * 10 // self.total) > self.last_tenth:
            self.last_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        filled = WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (WIDTH - filled)
        elapsed = time.monotonic() - self.start
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.label} [{bar}] {self.done}/{self.total}{failed}  {elapsed:6.1f}s"
