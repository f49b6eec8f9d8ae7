"""The aux buffer: one row per in-flight room with what decode needs besides KV.

Prefill computes the first output token; decode must emit it (and its logprobs)
before decoding. The row travels with the last chunk through the same transfer
engine, and carries the room id so decode can prove the row is for this room
and not a stale or misdirected write.
"""

from __future__ import annotations

import threading

import msgspec
import numpy as np

from pdcore.errors import PdcoreError

DEFAULT_TOP_K = 8


class AuxData(msgspec.Struct):
    """First token of a room, its logprob and up to ``top_k`` top logprobs."""

    token_id: int
    logprob: float = 0.0
    top_ids: list[int] = []
    top_logprobs: list[float] = []


def aux_dtype(top_k: int) -> np.dtype:
    return np.dtype(
        [
            ("room", "<u8"),
            ("token_id", "<i8"),
            ("logprob", "<f4"),
            ("top_n", "<i4"),
            ("top_ids", "<i8", (top_k,)),
            ("top_logprobs", "<f4", (top_k,)),
        ]
    )


class AuxBuffer:
    """``num_slots`` packed rows in one numpy array, registered once with the engine."""

    def __init__(self, num_slots: int, top_k: int = DEFAULT_TOP_K):
        if num_slots < 1 or top_k < 0:
            raise ValueError(f"aux buffer needs num_slots >= 1, top_k >= 0: {num_slots}, {top_k}")
        self.top_k = top_k
        self.rows = np.zeros(num_slots, dtype=aux_dtype(top_k))
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def addr(self) -> int:
        return self.rows.ctypes.data

    @property
    def row_bytes(self) -> int:
        return self.rows.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    def row_addr(self, slot: int) -> int:
        self._check(slot)
        return self.addr + slot * self.row_bytes

    def alloc(self) -> int | None:
        """A free slot, or None when all are in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def free(self, slot: int) -> None:
        self._check(slot)
        with self._lock:
            if slot in self._free:
                raise PdcoreError(f"aux slot {slot} freed twice")
            self._free.append(slot)

    def num_free(self) -> int:
        with self._lock:
            return len(self._free)

    def write(self, slot: int, room: int, data: AuxData) -> None:
        self._check(slot)
        n = min(len(data.top_ids), len(data.top_logprobs), self.top_k)
        row = self.rows[slot]
        row["room"] = room
        row["token_id"] = data.token_id
        row["logprob"] = data.logprob
        row["top_n"] = n
        row["top_ids"][:] = 0
        row["top_logprobs"][:] = 0
        row["top_ids"][:n] = data.top_ids[:n]
        row["top_logprobs"][:n] = data.top_logprobs[:n]

    def clear(self, slot: int) -> None:
        """Zero the row (room 0 is never valid) so a missing write cannot pass for one."""
        self._check(slot)
        self.rows[slot] = np.zeros((), dtype=self.rows.dtype)

    def load(self, slot: int, raw: bytes) -> None:
        """Set a row from its packed bytes (an aux row that came in a notice)."""
        self._check(slot)
        if len(raw) != self.row_bytes:
            raise PdcoreError(f"aux row has {len(raw)} bytes, this buffer's rows {self.row_bytes}")
        self.rows[slot] = np.frombuffer(raw, dtype=self.rows.dtype)[0]

    def room(self, slot: int) -> int:
        self._check(slot)
        return int(self.rows[slot]["room"])

    def read(self, slot: int) -> AuxData:
        self._check(slot)
        row = self.rows[slot]
        n = int(row["top_n"])
        return AuxData(
            token_id=int(row["token_id"]),
            logprob=float(row["logprob"]),
            top_ids=[int(x) for x in row["top_ids"][:n]],
            top_logprobs=[float(x) for x in row["top_logprobs"][:n]],
        )

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise PdcoreError(f"aux slot {slot} out of range [0, {self.num_slots})")
