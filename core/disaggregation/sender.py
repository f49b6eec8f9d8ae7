"""Prefill side of one room: wait for decode's pages, push chunks, end in a final state.

A room's pages are read by the transfer engine until its last write ends, so the
room reports FAILED only once no write of it is in flight: the scheduler may free
(or cache) its pages as soon as ``poll()`` returns a final state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pdcore.disaggregation.aux import AuxData
from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.disaggregation.protocol import EndpointInfo, TransferRequest
from pdcore.errors import PdcoreError

if TYPE_CHECKING:
    from pdcore.disaggregation.prefill_manager import PrefillKVManager


class KVSender:
    """Created by ``PrefillKVManager.sender(room)``; every state change holds the
    manager's ``lock`` (``*_locked`` methods: the caller holds it)."""

    def __init__(self, mgr: PrefillKVManager, room: int):
        self.mgr = mgr
        self.room = room
        self.state = KVPoll.WAITING_FOR_DECODE
        self.reason = ""
        self.created = time.monotonic()
        self.request: TransferRequest | None = None
        self.peer: EndpointInfo | None = None
        self.peer_id = ""
        self.next_chunk = 0
        self.page_offset = 0
        self.inflight = 0
        self.last_submitted = False
        self.last_done = False
        self.abort_reason = ""
        # Decode prefilled the request itself: FAILED here is no error (see on_abort).
        self.served_by_decode = False

    def poll(self) -> KVPoll:
        """Current state; a final state means this room's pages are no longer read."""
        with self.mgr.lock:
            if self.state is KVPoll.WAITING_FOR_DECODE:
                limit = self.mgr.env.bootstrap_timeout
                if time.monotonic() - self.created > limit:
                    self.fail_locked(
                        f"decode did not send its KV page indices within {limit:g}s "
                        "(SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT)"
                    )
            return self.state

    @property
    def failure_reason(self) -> str:
        return self.reason

    def send_chunk(
        self, src_pages: Sequence[int], is_last: bool, aux: AuxData | None = None
    ) -> None:
        """Queue this chunk's pages (all layers, one batched write); aux goes with the last.

        Chunk ``i`` lands in decode's pages following those of chunk ``i-1``. A
        no-op once the room failed (the next ``poll()`` says FAILED).
        """
        mgr = self.mgr
        with mgr.lock:
            if self.state is KVPoll.FAILED or self.abort_reason:
                return
            if self.state not in (KVPoll.READY, KVPoll.TRANSFERRING):
                raise PdcoreError(
                    f"room {self.room}: send_chunk() in state {self.state.name}; "
                    "poll() until READY first"
                )
            if self.last_submitted:
                raise PdcoreError(f"room {self.room}: send_chunk() after the last chunk")
            src = [int(p) for p in src_pages]
            dst = self.request.dst_pages[self.page_offset : self.page_offset + len(src)]
            if len(dst) < len(src):
                have = len(self.request.dst_pages)
                self.fail_locked(
                    f"prefill has more pages ({self.page_offset + len(src)}) than decode "
                    f"allocated ({have})"
                )
                return
            if not src and not is_last:
                return
            self.state = KVPoll.TRANSFERRING
            self.page_offset += len(src)
            self.inflight += 1
            self.last_submitted = is_last
            chunk = self.next_chunk
            self.next_chunk += 1
        mgr.submit_chunk(self, chunk, src, dst, is_last, aux)

    def abort(self, reason: str = "aborted by prefill") -> None:
        """Give up on the room and tell decode; FAILED once no write is in flight."""
        with self.mgr.lock:
            if self.state in FINAL or self.abort_reason:
                return
            tell = self.request is not None
            self.fail_locked(reason)
        if tell:
            self.mgr.notify_abort(self, reason)

    # ---- driven by the manager: decode's messages and the transfer workers ----

    def fail_locked(self, reason: str) -> None:
        """Mark failed; finalize now if nothing is in flight, else when the last write ends."""
        if self.state in FINAL or self.abort_reason:
            return
        self.abort_reason = reason
        if self.inflight == 0:
            self.mgr.finalize_locked(self, KVPoll.FAILED, reason)

    def attach_locked(self, request: TransferRequest, peer: EndpointInfo, peer_id: str) -> None:
        """Decode's transfer request arrived: the room is READY to send."""
        self.request, self.peer, self.peer_id = request, peer, peer_id
        if self.state is KVPoll.WAITING_FOR_DECODE:
            self.state = KVPoll.READY

    def decode_aborted_locked(self, reason: str, served_by_decode: bool) -> None:
        """Decode gave up on the room, or (``served_by_decode``) computes it itself."""
        if self.state not in FINAL and not self.abort_reason:
            self.served_by_decode = served_by_decode
        self.fail_locked(reason)

    def write_ended_locked(self, is_last: bool, error: str) -> None:
        """A transfer worker finished one chunk (``error``: why it failed, or '');
        the room ends once its last write is over."""
        self.inflight -= 1
        if error:
            self.fail_locked(error)
        if self.abort_reason and self.inflight == 0 and self.state not in FINAL:
            self.mgr.finalize_locked(self, KVPoll.FAILED, self.abort_reason)
        elif is_last and not error:
            self.last_done = True
        if self.last_done and self.inflight == 0 and self.state not in FINAL:
            self.mgr.finalize_locked(self, KVPoll.SUCCESS, "")

    def __repr__(self) -> str:
        return f"KVSender(room={self.room}, state={self.state.name})"
