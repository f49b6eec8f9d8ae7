"""Prefill's transfer workers' job: write one chunk to every decode rank, then tell decode.

Runs on a transfer worker thread with no lock held and changes no room state:
it returns '' or the reason the chunk failed, and the prefill manager ends the
chunk (``PrefillKVManager``). Each write's bytes and time go to ``on_write``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from pdcore.disaggregation.auth import seal
from pdcore.disaggregation.aux import AuxBuffer, AuxData
from pdcore.disaggregation.control import ControlError, request
from pdcore.disaggregation.kv_args import FINAL, KVArgs
from pdcore.disaggregation.protocol import ChunkDone, ErrorReply
from pdcore.disaggregation.protocol import encode as encode_message
from pdcore.disaggregation.transfer import TransferEngine, TransferError
from pdcore.platform import MemoryKind

log = logging.getLogger(__name__)

NOTICE_TIMEOUT_S = 5.0


class Target(NamedTuple):
    """One decode rank a prefill writes to: its engine peer id and its pages."""

    peer_id: str
    heads_first: int
    heads_count: int
    kv_buffers: tuple[int, ...]
    page_bytes: int


class ChunkTask(NamedTuple):
    """A chunk queued for a transfer worker, with the decode ranks it goes to.
    ``staged``: ``(peer id, runs, staging offset)`` per decode rank when the leader
    staged the chunk (else None: written straight from our pages)."""

    sender: object
    chunk: int
    src: list
    dst: list
    is_last: bool
    aux: object
    targets: list[Target]
    staged: list | None = None


def page_spans(src, dst) -> list[tuple[int, int, int]]:
    """``(first src page, first dst page, count)`` for runs consecutive on both sides."""
    spans: list[list[int]] = []
    for s, d in zip(src, dst, strict=True):
        if spans and spans[-1][0] + spans[-1][2] == s and spans[-1][1] + spans[-1][2] == d:
            spans[-1][2] += 1
        else:
            spans.append([s, d, 1])
    return [(s, d, n) for s, d, n in spans]


# on_write(room, started, nbytes, runs, seconds): one finished write, for the counters.
WriteHook = Callable[[int, float, int, int, float], None]


class ChunkWriter:
    """Writes chunks through ``engine``; shared by all transfer workers (no state)."""

    def __init__(
        self,
        engine: TransferEngine,
        aux: AuxBuffer,
        args: KVArgs,
        key: bytes | None,
        *,
        in_band_notices: bool,
        aux_inline: bool,
        timeout: float,
        on_write: WriteHook,
    ):
        self.engine = engine
        self.aux = aux
        self.args = args
        self._key = key
        self.in_band_notices = in_band_notices
        self.aux_inline = aux_inline
        self.timeout = timeout
        self.on_write = on_write

    def direct_writes(self, task: ChunkTask) -> list[tuple[str, list]]:
        """``(peer id, runs)`` per decode rank, read straight from our pages (same
        heads on both sides, or an MLA latent every rank holds whole)."""
        # Page ranges contiguous on both sides first, then one run per buffer and
        # range: 60 runs instead of 60 x pages for a fresh pool. This thread shares
        # the GIL with the forward pass; per-page Python work here cost NIXL writes
        # ~100 ms per 2k-token chunk on a 2-core machine.
        spans = page_spans(task.src, task.dst)
        pb = self.args.page_bytes
        writes = []
        for t in task.targets:
            runs = [
                (lb + s * pb, rb + d * pb, n * pb)
                for (lb, _), rb in zip(self.args.kv_buffers, t.kv_buffers, strict=True)
                for s, d, n in spans
            ]
            writes.append((t.peer_id, runs))
        return writes

    def write(self, task: ChunkTask) -> str:
        """Write one chunk to every decode rank (and the aux row if last), then tell
        decode; '' or an error. Decode's leader rank is written last: its write
        carries the in-band notice, so every other rank's bytes landed before it."""
        sender, chunk, src, is_last, aux = task.sender, task.chunk, task.src, task.is_last, task.aux
        if sender.abort_reason or sender.state in FINAL:  # a stale read is harmless
            return ""
        peer = sender.peer
        slot = None
        aux_row = b""
        try:
            if task.staged is not None:
                per_rank = [(peer_id, runs) for peer_id, runs, _ in task.staged]
            else:
                per_rank = self.direct_writes(task)
            leader_id, runs = per_rank[0]
            writes = [(peer_id, r) for peer_id, r in per_rank[1:] if r]
            writes.append((leader_id, runs))
            if is_last:
                slot = self.aux.alloc()
                if slot is None:
                    return f"no free aux slot on prefill ({self.aux.num_slots} in use)"
                self.aux.write(slot, sender.room, aux or AuxData(token_id=-1))
                remote = peer.aux.addr + sender.request.aux_slot * peer.aux.row_bytes
                aux_run = (self.aux.row_addr(slot), remote, self.aux.row_bytes)
                if self.aux_inline:
                    aux_row = self.aux.rows[slot].tobytes()
                elif self.args.memory_kind is MemoryKind.DRAM:
                    runs.append(aux_run)
                else:  # KV in VRAM, aux in DRAM: engines like NIXL take one kind per write
                    writes.append((leader_id, [aux_run]))
            writes = [(peer_id, w) for peer_id, w in writes if w]
            done = ChunkDone(sender.room, chunk, is_last, len(src), aux_row)
            notice = self._in_band(done) if self.in_band_notices else None
            for i, (peer_id, write) in enumerate(writes):
                start = time.monotonic()
                last = i == len(writes) - 1  # the notice rides on the last write only
                handle = self.engine.write(peer_id, write, notice if last else None)
                try:
                    handle.wait(self.timeout)
                finally:
                    handle.release()
                spent = time.monotonic() - start
                self.on_write(sender.room, start, handle.nbytes, len(write), spent)
                log.debug(
                    "room %d chunk %d write %d: %d runs, %d bytes in %.1f ms",
                    sender.room, chunk, i, len(write), handle.nbytes, spent * 1e3,
                )  # fmt: skip
            if writes and notice is not None:  # decode learns of the chunk with its data
                return ""
            reply = request(peer.notify_addr, done, NOTICE_TIMEOUT_S, self._key)
            if isinstance(reply, ErrorReply):
                return f"decode refused chunk {chunk} notice: {reply.message}"
            return ""
        except (TransferError, ControlError) as e:
            return f"chunk {chunk} of room {sender.room}: {e}"
        finally:
            if slot is not None:
                self.aux.free(slot)

    def _in_band(self, done: ChunkDone) -> bytes:
        """The notice a WRITE carries: sealed like a control message when there is a key."""
        payload = encode_message(done)
        return payload if self._key is None else seal(self._key, payload)
