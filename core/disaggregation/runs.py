"""Byte runs of a write, merged and bounds-checked in numpy.

A write's runs come one per page and K/V buffer when the pool is fragmented:
65,536 of them for a 16k-token prompt of an 8B model in 16-token pages. Merging
and checking those in a Python loop took 14-34 ms per write on an H200 host
(measured: ``bench/gpu/pd_two_gpus.py``, where the NVLink copy itself then took
5.5 ms), on the thread that shares the GIL with the forward pass. numpy does
the same in well under a millisecond. Addresses that do not fit int64 (only a
hostile or broken caller makes them) take the exact Python path in
``transfer.py`` instead; so do runs this fast check cannot place, so errors and
corner cases (overlapping registrations) keep one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INT64_MAX = (1 << 63) - 1


def as_table(runs) -> np.ndarray | None:
    """``runs`` as an ``[n, 3]`` int64 array, or None if a value does not fit."""
    try:
        table = np.asarray(runs if isinstance(runs, np.ndarray) else list(runs), dtype=np.int64)
    except (OverflowError, ValueError, TypeError):
        return None
    table = table.reshape(-1, 3)
    if len(table) and (
        table.min() < 0 or int(table[:, :2].max()) + int(table[:, 2].max()) > INT64_MAX
    ):
        return None
    return table


def coalesce(table: np.ndarray, local_starts: Sequence[int], remote_starts: Sequence[int]):
    """Runs sorted as tuples, those contiguous on both sides merged, never across the
    start of a registered region; empty runs dropped. Returns an ``[m, 3]`` array."""
    table = table[table[:, 2] > 0]
    if not len(table):
        return table
    table = table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
    local, remote, length = table[:, 0], table[:, 1], table[:, 2]
    joins = np.zeros(len(table), dtype=bool)
    joins[1:] = (local[:-1] + length[:-1] == local[1:]) & (remote[:-1] + length[:-1] == remote[1:])
    if len(local_starts):
        joins &= ~np.isin(local, np.asarray(local_starts, dtype=np.int64))
    if len(remote_starts):
        joins &= ~np.isin(remote, np.asarray(remote_starts, dtype=np.int64))
    firsts = np.flatnonzero(~joins)
    merged = table[firsts].copy()
    merged[:, 2] = np.add.reduceat(length, firsts)
    return merged


def inside(addrs: np.ndarray, lengths: np.ndarray, regions) -> np.ndarray:
    """Per run: does one region hold ``[addr, addr + length)``? (The region that
    starts last at or before ``addr``; False may still be held by an overlapping
    one, so callers re-check those exactly.)"""
    ordered = sorted(regions, key=lambda r: r.addr)
    try:
        starts = np.array([r.addr for r in ordered], dtype=np.int64)
        ends = np.array([r.addr + r.length for r in ordered], dtype=np.int64)
    except (OverflowError, TypeError, ValueError):  # odd regions: the exact check decides
        return np.zeros(len(addrs), dtype=bool)
    if not len(starts):
        return np.zeros(len(addrs), dtype=bool)
    at = np.searchsorted(starts, addrs, side="right") - 1
    ok = at >= 0
    at = np.maximum(at, 0)
    return ok & (addrs + lengths <= ends[at])
