"""PD decode: a prealloc queue and a transfer queue in front of the running batch.

A request first handshakes with its prefill (through its ``KVReceiver``), then
gets pages for its whole prompt when the KV budget allows (else it waits, in
order), hands them to prefill, and waits, polled once per step and never
blocking the engine, until the KV and the first token arrived. It then joins
the running decode batch as if it had been prefilled here. A failed transfer
frees its pages and aux slot and reports the reason, unless prefill may still
write them (it went silent, or did not confirm an abort): then the request fails
at once but its pages and aux slot stay in quarantine until the KV manager says
the room is settled (see ``DecodeKVManager.settled``).

Conditional disaggregation (``--disaggregation-local-prefill-threshold N``): a
request with at most N tokens left to prefill here (its prompt minus decode's own
prefix-cache hit) skips the queues: decode tells prefill to drop the room and
schedules the request like a null-mode server would (chunked prefill included).
"""

from __future__ import annotations

from pdcore.disaggregation.decode_manager import DecodeKVManager
from pdcore.disaggregation.fake import FakeKVReceiver
from pdcore.disaggregation.kv_args import KVPoll
from pdcore.disaggregation.receiver import KVReceiver
from pdcore.errors import PdcoreError
from pdcore.scheduler.pd_metrics import PDMetrics
from pdcore.scheduler.request import Req, finish_reason
from pdcore.scheduler.scheduler import ScheduledBatch, Scheduler


class DecodeQueues:
    sends_kv = False  # decode receives KV; it sends none

    def __init__(
        self,
        scheduler: Scheduler,
        manager: DecodeKVManager | None,
        local_prefill_threshold: int = 0,
    ):
        """``manager`` None: the ``fake`` backend (every room is a fake one).
        ``local_prefill_threshold``: prefill requests with at most this many tokens to
        compute here instead of receiving their KV (0: never)."""
        self.scheduler = scheduler
        self.manager = manager
        self.local_prefill_threshold = local_prefill_threshold
        self.prealloc: dict[str, Req] = {}
        self.transfers: dict[str, Req] = {}
        self.receivers: dict[str, KVReceiver | FakeKVReceiver] = {}
        self.slots: dict[str, int] = {}
        self.aborted: set[str] = set()
        # room -> (pages, aux slot) of failed rooms prefill may still write into.
        self.quarantine: dict[int, tuple[list[int], int | None]] = {}
        self.metrics = PDMetrics("decode")

    def knows(self, rid: str) -> bool:
        return rid in self.receivers

    def add(self, req: Req, room: int, bootstrap_addr: str, fake: bool = False) -> None:
        """Open the request's room with its prefill; raises ValueError (a 400) for a busy room.

        ``fake``: a warm-up or health-check request (see ``disaggregation.fake``);
        a fake room's pages never enter the prefix cache.
        """
        if self.knows(req.rid):
            raise ValueError(f"request id {req.rid!r} is already in flight")
        if not fake and self._prefills_locally(req):
            self._add_local(req, room, bootstrap_addr)
            return
        if fake or self.manager is None:
            self.receivers[req.rid] = FakeKVReceiver(room, req.input_ids[-1])
            req.cacheable = False  # its prompt pages are never written
        else:
            try:
                self.receivers[req.rid] = self.manager.receiver(room, bootstrap_addr)
            except PdcoreError as e:
                raise ValueError(str(e)) from None
            self.metrics.open(req.rid)
        self.prealloc[req.rid] = req

    def tokens_to_prefill(self, input_ids: list[int]) -> int:
        """Prompt tokens decode would compute itself: its prefix-cache hit is free (the
        same match the scheduler makes at admission, which always feeds one token)."""
        _, cached = self.scheduler.cache.match_prefix(input_ids[:-1])
        return len(input_ids) - cached

    def _prefills_locally(self, req: Req) -> bool:
        n = self.local_prefill_threshold
        return n > 0 and self.manager is not None and self.tokens_to_prefill(req.input_ids) <= n

    def _add_local(self, req: Req, room: int, bootstrap_addr: str) -> None:
        """Serve ``req`` here as a null-mode server would; prefill drops its room."""
        try:
            self.manager.drop_room(room, bootstrap_addr)
        except PdcoreError as e:
            raise ValueError(str(e)) from None
        req.pd_local_prefill = True
        self.scheduler.add(req)
        self.metrics.local_prefill += 1

    def poll(self) -> list:
        """Advance both queues; returns requests with their first token and
        ``(rid, reason)`` pairs for failed ones."""
        out: list = []
        blocked = False
        self._release_settled()
        for rid, req in list(self.prealloc.items()):
            receiver = self.receivers[rid]
            state = receiver.poll()
            if state is KVPoll.FAILED:
                del self.prealloc[rid]
                self.metrics.fail(rid, "bootstrap")
                out.append((rid, self._forget(rid)))
            elif state is KVPoll.WAITING_FOR_INPUT and not blocked:
                blocked = not self._preallocate(req, receiver)
        for rid, req in list(self.transfers.items()):
            state = self.receivers[rid].poll()
            if state not in (KVPoll.SUCCESS, KVPoll.FAILED):
                continue
            del self.transfers[rid]
            if state is KVPoll.SUCCESS and rid not in self.aborted:
                self.metrics.stage(rid, "decode_transferred")
                self._start_decode(req)
                out.append(req)
                continue
            receiver = self.receivers[rid]
            if getattr(receiver, "unsettled", False):  # prefill may still write them
                self.quarantine[receiver.room] = (req.pages, self.slots.pop(rid, None))
            else:
                self.scheduler.allocator.free(req.pages)
            req.pages = []
            reason = self._forget(rid)
            if rid in self.aborted:  # reported when aborted (even if the KV arrived)
                self.aborted.discard(rid)
            else:
                self.metrics.fail(rid, "transfer")
                out.append((rid, reason))
        return out

    def _preallocate(self, req: Req, receiver: KVReceiver | FakeKVReceiver) -> bool:
        """Pages for the whole prompt plus an aux slot, if the KV budget allows; in order."""
        sched = self.scheduler
        if sched.waiting:  # retracted requests first: new pages would starve them
            return False
        busy = len(sched.running) + len(self.transfers)
        if busy >= sched.config.max_running_requests:
            return False
        need = sched.pages_for(len(req.input_ids))
        reserve = sched.config.decode_reserve_pages * (busy + 1) if busy else 0
        if need + reserve > sched.allocator.num_free + sched.cache.evictable_pages:
            return False
        fake = isinstance(receiver, FakeKVReceiver)
        slot = -1 if fake else self.manager.aux.alloc()
        if slot is None:
            return False
        req.pages = sched.alloc_pages(need)
        if not fake:
            self.slots[req.rid] = slot
        receiver.send_request(req.pages, slot)
        del self.prealloc[req.rid]
        self.transfers[req.rid] = req
        self.metrics.stage(req.rid, "decode_bootstrap")
        return True

    def _start_decode(self, req: Req) -> None:
        """The prompt's KV is in ``req.pages``: enter the running batch with the first token."""
        sched = self.scheduler
        rid = req.rid
        aux = self.receivers[rid].aux()
        self._forget(rid)
        req.computed_len = len(req.input_ids)
        req.num_cached_pages, req.prefix_handle = 0, None
        req.mark_admitted()
        # Prefill computed the prompt (and reports its logprobs): none to compute or send here.
        req.input_logprobs_done = req.input_logprobs_sent = True
        req.output_ids.append(aux.token_id)
        if req.return_logprob:
            req.logprobs.append(aux.logprob)
        if req.top_logprobs_num:
            pairs = list(zip(aux.top_ids, aux.top_logprobs, strict=True))
            req.top_logprobs.append([[t, lp] for t, lp in pairs[: req.top_logprobs_num]])
        sched.start_running(req)
        reason = sched.stop_reason(req, aux.token_id)
        if reason is not None:
            sched.finish(req, reason)

    def after_commit(self, batch: ScheduledBatch, produced: list[Req]) -> list[Req]:
        return produced

    def abort(self, rid: str) -> Req | None:
        """Abort a request still waiting for its KV; pages wait for the receiver to fail."""
        req = self.prealloc.pop(rid, None) or self.transfers.get(rid)
        if req is None:
            return None
        self.receivers[rid].abort("aborted by the decode client")
        if rid in self.transfers:
            self.aborted.add(rid)
        else:
            self._forget(rid)
        req.finish(finish_reason("abort", message="aborted by the client"))
        return req

    def dropped(self, req: Req) -> None:
        """Decode requests leave the queues before the scheduler sees them: nothing to do."""

    def _forget(self, rid: str) -> str:
        self.metrics.close(rid)
        slot = self.slots.pop(rid, None)
        if slot is not None:
            self.manager.aux.free(slot)
        receiver = self.receivers.pop(rid)
        return receiver.failure_reason or "KV transfer failed"

    def _release_settled(self) -> None:
        """Quarantined pages and aux slots whose room is settled go back to the pool."""
        for room, (pages, slot) in list(self.quarantine.items()):
            if self.manager.settled(room):
                del self.quarantine[room]
                self.scheduler.allocator.free(pages)
                if slot is not None:
                    self.manager.aux.free(slot)

    def has_work(self) -> bool:
        return bool(self.prealloc or self.transfers or self.quarantine)

    def num_waiting(self) -> int:
        """Requests waiting for pages (prealloc queue) or for their KV (transfer queue)."""
        return len(self.prealloc) + len(self.transfers)

    def held_pages(self) -> int:
        held = sum(len(r.pages) for r in self.transfers.values())
        return held + sum(len(pages) for pages, _ in self.quarantine.values())

    def stats(self) -> dict:
        return {
            "mode": "decode",
            "prealloc_queue": len(self.prealloc),
            "transfer_queue": len(self.transfers),
            "held_pages": self.held_pages(),
            "quarantined_pages": sum(len(pages) for pages, _ in self.quarantine.values()),
            **self.metrics.summary(),
            **(self.manager.stats() if self.manager else {"transfer_backend": "fake"}),
        }

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
