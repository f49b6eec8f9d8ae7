"""Decode side of one room: handshake, hand prefill the pages, wait for every chunk.

SUCCESS needs every chunk's notice and an aux row whose room id is this room:
a row left over from an earlier room, or written for another one, fails the
room instead of starting decode from someone else's first token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from pdcore.disaggregation.aux import AuxData
from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.disaggregation.protocol import Abort, ChunkDone, TransferRequest
from pdcore.errors import PdcoreError

if TYPE_CHECKING:
    from pdcore.disaggregation.decode_manager import DecodeKVManager


class KVReceiver:
    """Created by ``DecodeKVManager.receiver(room, addr)``; every state change holds
    the manager's ``lock`` (``*_locked`` methods: the caller holds it)."""

    def __init__(self, mgr: DecodeKVManager, room: int, addr: str, handshake: Future):
        self.mgr = mgr
        self.room = room
        self.addr = addr
        self.state = KVPoll.BOOTSTRAPPING
        self.reason = ""
        self.ready_at = 0.0
        self._handshake = handshake
        self._request: Future | None = None
        self._abort: Future | None = None
        self.abort_reason = ""
        self.dst_pages: list[int] = []
        self.aux_slot = -1
        self.chunks: set[int] = set()
        self.last_chunk: int | None = None
        self.pages_received = 0
        # FAILED while prefill may still write our pages (it went silent, or did not
        # confirm an abort): the pages wait for ``DecodeKVManager.settled`` before reuse.
        self.unsettled = False
        self.served_by_decode = False  # a request decode serves itself opens no receiver

    def poll(self) -> KVPoll:
        """Current state; on a final state decode may reuse (FAILED) or decode (SUCCESS)."""
        with self.mgr.lock:
            self._advance_locked()
            return self.state

    @property
    def failure_reason(self) -> str:
        return self.reason

    def send_request(self, dst_pages: Sequence[int], aux_slot: int) -> None:
        """Give prefill the preallocated pages and aux row; the room is TRANSFERRING after."""
        mgr = self.mgr
        with mgr.lock:
            self._advance_locked()
            if self.state is KVPoll.FAILED:
                return
            if self.state is not KVPoll.WAITING_FOR_INPUT:
                raise PdcoreError(
                    f"room {self.room}: send_request() in state {self.state.name}; "
                    "poll() until WAITING_FOR_INPUT first"
                )
            self.dst_pages = [int(p) for p in dst_pages]
            self.aux_slot = int(aux_slot)
            mgr.aux.clear(self.aux_slot)
            self.state = KVPoll.TRANSFERRING
            msg = TransferRequest(self.room, self.dst_pages, self.aux_slot, mgr.instance_id)
            self._request = mgr.submit(mgr.client.send, self.addr, msg)

    def aux(self) -> AuxData:
        """The first token and logprobs; valid once ``poll()`` returned SUCCESS."""
        if self.state is not KVPoll.SUCCESS:
            raise PdcoreError(f"room {self.room}: aux data read in state {self.state.name}")
        return self.mgr.aux.read(self.aux_slot)

    def abort(self, reason: str = "aborted by decode") -> None:
        """Tell prefill to stop; FAILED once prefill confirmed no write is in flight.

        If prefill never got the pages, the room fails at once.
        """
        mgr = self.mgr
        with mgr.lock:
            if self.state in FINAL or self.abort_reason or self._abort is not None:
                return
            msg = Abort(self.room, reason, mgr.instance_id)
            if self._handshake.done() and self._handshake.exception() is None:
                fut = mgr.submit(mgr.client.send, self.addr, msg)
            else:
                fut = None
            if self.state is KVPoll.TRANSFERRING and fut is not None:
                self._abort, self.abort_reason = fut, reason
            else:
                mgr.finalize_locked(self, KVPoll.FAILED, reason)

    # ---- driven by the manager: notices, lost peers, the monitor --------------

    def on_chunk_locked(self, msg: ChunkDone) -> None:
        """Prefill says chunk ``msg.chunk`` landed; SUCCESS once all did (and aux checks)."""
        if self.state is not KVPoll.TRANSFERRING or msg.chunk in self.chunks:
            return
        # Every chunk but the last carries a page, so there are at most pages + 1 of
        # them. A notice beyond that (chunk 10**12 once built a set that size, holding
        # the lock and the GIL) or with negative pages fails the room.
        have = len(self.dst_pages)
        if not (0 <= msg.chunk <= have and 0 <= msg.num_pages <= have):
            self.fail_locked(
                f"prefill sent an impossible notice: chunk {msg.chunk} with "
                f"{msg.num_pages} pages, decode gave {have} pages"
            )
            return
        self.chunks.add(msg.chunk)
        self.pages_received += msg.num_pages
        if msg.is_last:
            self.last_chunk = msg.chunk
            if msg.aux_row:  # an engine without host-memory writes sent the row here
                try:
                    self.mgr.aux.load(self.aux_slot, msg.aux_row)
                except PdcoreError as e:
                    self.fail_locked(f"bad aux row in the last chunk notice: {e}")
                    return
        if self.pages_received > len(self.dst_pages):
            self.fail_locked(
                f"prefill reported {self.pages_received} pages, decode gave {len(self.dst_pages)}"
            )
        self._advance_locked()

    def fail_locked(self, reason: str, unsettled: bool = False) -> None:
        """FAILED; ``unsettled``: prefill had our pages and may still write them."""
        if self.state not in FINAL:
            if unsettled and self.state is KVPoll.TRANSFERRING:
                self.unsettled = True
                self.mgr.hold_locked(self.room, self.addr)
            self.mgr.finalize_locked(self, KVPoll.FAILED, reason)

    def _advance_locked(self) -> None:
        if self.state in FINAL:
            return
        now = time.monotonic()
        if self.state is KVPoll.BOOTSTRAPPING:
            if not self._handshake.done():
                return
            err = self._handshake.exception()
            if err is not None:
                self.fail_locked(f"handshake with prefill {self.addr} failed: {err}")
                return
            self.state, self.ready_at = KVPoll.WAITING_FOR_INPUT, now
        if self._abort is not None:
            if self._abort.done():
                err = self._abort.exception()
                confirmed = err is None and getattr(self._abort.result(), "ok", False)
                self.fail_locked(self.abort_reason, unsettled=not confirmed)
            return
        if self._request is not None and self._request.done() and self._request.exception():
            # Prefill may have the pages although its reply was lost, and would write
            # them: free them (FAILED) only once prefill answered an abort.
            self.abort(f"transfer request to {self.addr} failed: {self._request.exception()}")
            return
        if self.last_chunk is not None and self.chunks == set(range(self.last_chunk + 1)):
            got = self.mgr.aux.room(self.aux_slot)
            if got != self.room:
                self.fail_locked(
                    f"aux row {self.aux_slot} carries room {got}, expected {self.room}; "
                    "the KV pages cannot be trusted"
                )
            else:
                self.mgr.finalize_locked(self, KVPoll.SUCCESS, "")
            return
        limit = self.mgr.env.waiting_timeout
        if now - self.ready_at > limit:
            self.abort(
                f"KV cache of room {self.room} not received within {limit:g}s "
                "(SGLANG_DISAGGREGATION_WAITING_TIMEOUT)"
            )

    def __repr__(self) -> str:
        return f"KVReceiver(room={self.room}, state={self.state.name})"
