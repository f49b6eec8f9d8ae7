"""TCP ports for child processes, handed out without races between processes.

The old way (bind port 0, read the number, close, pass it to a child) races: between
the close and the child's bind, anyone may take the port: the kernel giving it to an
outgoing connection as its ephemeral source port, or a parallel test asking for "a
free port" the same way. This module closes both holes:

* **Outside the ephemeral range.** Ports are drawn at random from outside the
  kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``; 32768-60999
  when unreadable), so the kernel never hands them to outgoing connections.
* **Reserved across processes.** Each port is reserved by an exclusive, non-blocking
  ``fcntl.flock`` on its own lock file under ``<tmp>/pdcore-ports-<uid>/``. The lock
  lives as long as the reservation (an open file descriptor), so every process on
  the machine using this module skips a reserved port, and a crashed process frees
  its ports with its descriptors: no stale state to clean up.
* **Checked free.** A reserved port is then bound (no ``SO_REUSEADDR``, on all
  interfaces) and released at once; a port someone listens on, or that lingers in
  TIME_WAIT, is skipped.

The checked socket is closed before the child binds, so a program that does not use
this module can still, rarely, take the port first; ``pdcore.up.launch`` therefore
restarts a child whose address was in use on fresh ports, a bounded number of times.

``reserve()`` gives a ``Reservation`` to release when the child has bound (or keep);
``pick_port()`` reserves one for the rest of this process's life, for callers that
only want a number.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL = (32768, 60999)  # Linux's default range
LOWEST = 10000  # below: well-known services people run on their machines
MAX_TRIES = 2000


class NoFreePort(RuntimeError):
    """No port could be reserved (every candidate locked or in use)."""


class Reservation:
    """``count`` consecutive ports from ``port``, locked until ``release()``."""

    def __init__(self, port: int, fds: list[int]):
        self.port = port
        self.ports = list(range(port, port + len(fds)))
        self._fds = fds

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the descriptor drops its flock

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"Reservation({self.ports})"


def ephemeral_range(path: Path = EPHEMERAL_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL
    return (low, high) if 0 < low <= high <= 65535 else LINUX_EPHEMERAL


def candidate_ranges(ephemeral: tuple[int, int] | None = None) -> list[range]:
    """Port ranges outside the ephemeral one (the whole non-privileged range if it covers
    everything, so there is always somewhere to look)."""
    low, high = ephemeral or ephemeral_range()
    ranges = [r for r in (range(LOWEST, low), range(high + 1, 65536)) if len(r) >= 100]
    return ranges or [range(LOWEST, 65536)]


def lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"pdcore-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def reserve(count: int = 1, host: str = "") -> Reservation:
    """Lock ``count`` consecutive free ports (checked bindable on ``host``, all
    interfaces by default) for this process until the reservation is released."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    ranges = candidate_ranges()
    folder = lock_dir()
    rng = random.SystemRandom()
    for _ in range(MAX_TRIES):
        r = rng.choices(ranges, weights=[len(x) for x in ranges])[0]
        if len(r) < count:
            continue
        base = rng.randrange(r.start, r.stop - count + 1)
        got = _reserve_run(folder, base, count, host)
        if got is not None:
            return got
    raise NoFreePort(f"no {count} free consecutive port(s) after {MAX_TRIES} tries")


def _reserve_run(folder: Path, base: int, count: int, host: str) -> Reservation | None:
    fds: list[int] = []
    for port in range(base, base + count):
        fd = _lock(folder, port)
        if fd is None or not bindable(port, host):
            if fd is not None:
                os.close(fd)
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return Reservation(base, fds)


def _lock(folder: Path, port: int) -> int | None:
    """An open descriptor holding ``port``'s exclusive lock, or None if it is held."""
    fd = os.open(folder / f"{port}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def bindable(port: int, host: str = "") -> bool:
    """Whether ``host:port`` can be bound now (no SO_REUSEADDR: TIME_WAIT counts as busy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


# pick_port's reservations: kept so their locks live as long as this process.
_kept: list[Reservation] = []
_kept_lock = threading.Lock()  # guards _kept (threads may pick ports at once)


def pick_port(count: int = 1, host: str = "") -> int:
    """A free port (the first of ``count`` consecutive ones), reserved for the rest of
    this process's life: for callers that pass the number on and never release it."""
    reservation = reserve(count, host)
    with _kept_lock:
        _kept.append(reservation)
    return reservation.port
