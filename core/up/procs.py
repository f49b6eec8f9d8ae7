"""Child processes in their own process groups, so stopping one stops its engine too.

Each child starts with ``start_new_session=True`` (a terminal's Ctrl-C reaches only
the launcher, which then stops the children in order) and, with ``die_with_parent``
on Linux, asks the kernel for SIGTERM if the launching thread dies, so even
``kill -9`` of ``pdcore up`` leaves no server behind (off by default: the kernel
ties it to the thread that started the child, and a worker thread may end first).
Output goes to a log file: no pipe to fill up, and its tail explains a failure.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


class Child:
    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        env: dict[str, str],
        die_with_parent: bool = False,
    ):
        self.name = name
        self.log_path = log_path
        self.cmd = list(cmd)
        self._log = open(log_path, "ab")  # a restart appends: the earlier output stays
        self.log_start = self._log.tell()
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit code once the process is gone, else None."""
        return self.proc.poll()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, lines: int = 20) -> list[str]:
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def output(self) -> str:
        """Everything this child has written so far (not an earlier child's in the same log)."""
        if not self._log.closed:
            self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def last_note(self) -> str:
        """The gist of the server's latest ``pdcore: ...`` line ("still loading the model")."""
        notes = [x for x in self.tail(40) if x.startswith("pdcore: ")]
        note = notes[-1].removeprefix("pdcore: ") if notes else ""
        return note.split(" (")[0].split(";")[0]

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()


def stop_groups(
    children: Sequence[Child], grace: float, hurry=lambda: False, whole_group: bool = True
) -> None:
    """SIGTERM each child's group (or, ``whole_group=False``, only the child, which then
    stops its own helpers), wait up to ``grace`` s, SIGKILL what is left of the groups.

    ``hurry()`` true (a second Ctrl-C) skips the rest of the wait.
    """
    for child in children:
        if child.exited() is None:
            if whole_group:
                child.signal_group(signal.SIGTERM)
            else:
                child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(c.exited() is None for c in children):
        if time.monotonic() > deadline or hurry():
            break
        time.sleep(0.1)
    for child in children:
        # the leader is gone or lingering: sweep the group (engine, helpers) either way
        child.signal_group(signal.SIGKILL)
        try:
            child.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        child.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM me when the ``pdcore up`` process dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
