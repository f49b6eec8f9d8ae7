"""PD prefill: a bootstrap queue before the scheduler and a transfer queue after it.

A request waits (holding no pages or compute) until decode has sent its page
ids, is then prefilled like any request (chunked, prefix cache included) with
``max_new_tokens`` 1, and after every chunk the pages that chunk completed go to
decode. A finished request keeps its pages until its sender is final (the
transfer engine may still read them); only then are they cached like any
finished request's, and the client gets the first token or the failure.
"""

from __future__ import annotations

from pdcore.disaggregation.aux import AuxData
from pdcore.disaggregation.fake import FakeKVSender
from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.disaggregation.prefill_manager import PrefillKVManager
from pdcore.disaggregation.protocol import SERVED_BY_DECODE
from pdcore.disaggregation.sender import KVSender
from pdcore.errors import PdcoreError
from pdcore.scheduler.pd_metrics import PDMetrics
from pdcore.scheduler.request import Req, finish_reason
from pdcore.scheduler.scheduler import ScheduledBatch, Scheduler


class PrefillQueues:
    # Pages leave this process through a transfer engine after each chunk.
    sends_kv = True

    def __init__(self, scheduler: Scheduler, manager: PrefillKVManager | None, closers=()):
        """``manager`` None: the ``fake`` backend (every room is a fake one)."""
        self.scheduler = scheduler
        self.manager = manager
        self._closers = list(closers)
        self.page_size = scheduler.page_size
        self.bootstrap: dict[str, Req] = {}
        self.transfers: dict[str, Req] = {}  # finished prefill, pages held for the sender
        self.senders: dict[str, KVSender | FakeKVSender] = {}
        self.sent_pages: dict[str, int] = {}
        self.aborted: set[str] = set()
        self.metrics = PDMetrics("prefill")
        scheduler.defer_release = self._hold

    def knows(self, rid: str) -> bool:
        return rid in self.senders

    def add(self, req: Req, room: int, fake: bool = False) -> None:
        """Open the request's room; raises ValueError (a 400) for a busy room.

        ``fake``: a warm-up or health-check request (see ``disaggregation.fake``);
        a fake room's pages never enter the prefix cache.
        """
        if self.knows(req.rid):
            raise ValueError(f"request id {req.rid!r} is already in flight")
        if fake or self.manager is None:
            sender = FakeKVSender(room)
            req.cacheable = False
        else:
            try:
                sender = self.manager.sender(room)
            except PdcoreError as e:
                raise ValueError(str(e)) from None
            self.metrics.open(req.rid)
        req.params.max_new_tokens = 1  # decode generates the rest
        self.senders[req.rid] = sender
        self.sent_pages[req.rid] = 0
        self.bootstrap[req.rid] = req

    def poll(self) -> list:
        """Admit requests whose decode is ready; settle finished transfers.

        Returns the requests to report (their first token, or their end when decode
        served them itself) and ``(rid, reason)`` pairs for failed ones.
        """
        out: list = []
        self._collect_transfers()
        for rid in [r for r in self.scheduler.reqs if r in self.senders]:
            if self.senders[rid].poll() is KVPoll.FAILED:  # decode left: stop computing
                req = self.scheduler.abort(rid)
                self.aborted.discard(rid)  # report the transfer failure, not an abort
                if rid not in self.transfers:  # it was still waiting: no pages to settle
                    out.append(self._report_failed(req, "transfer"))
        for rid, req in list(self.bootstrap.items()):
            state = self.senders[rid].poll()
            if state is KVPoll.READY:
                del self.bootstrap[rid]
                self.metrics.stage(rid, "prefill_bootstrap")
                self.scheduler.add(req)
            elif state is KVPoll.FAILED:
                del self.bootstrap[rid]
                out.append(self._report_failed(req, "bootstrap"))
        for rid, req in list(self.transfers.items()):
            state = self.senders[rid].poll()
            if state not in FINAL:
                continue
            del self.transfers[rid]
            self.scheduler.release(req)
            if rid in self.aborted:  # client aborts are reported already, not failures
                self.aborted.discard(rid)
                self._forget(rid)
            elif state is KVPoll.SUCCESS:
                self.metrics.stage(rid, "prefill_transfer_kv_cache")
                self._forget(rid)
                out.append(req)
            else:
                out.append(self._report_failed(req, "transfer"))
        return out

    def _report_failed(self, req: Req, kind: str) -> Req | tuple[str, str]:
        """A failed room's report: ``(rid, reason)``, or, when decode served the request
        itself, the request ended with an abort marked ``pd_local_prefill``: a 2xx, so
        a router does not take it for a failure and abort decode's half."""
        rid = req.rid
        if not getattr(self.senders[rid], "served_by_decode", False):
            self.metrics.fail(rid, kind)
            return rid, self._forget(rid)
        self._forget(rid)
        self.metrics.local_prefill += 1
        req.finish(finish_reason("abort", message=SERVED_BY_DECODE))
        req.pd_local_prefill = True
        req.sent_tokens = len(req.output_ids)  # decode's tokens are the answer, not ours
        return req

    def _collect_transfers(self) -> None:
        if self.manager is not None:
            self.metrics.transfers(self.manager.take_transfers())

    def after_commit(self, batch: ScheduledBatch, produced: list[Req]) -> list[Req]:
        """Send the pages each row completed; hold back first tokens until the transfer ends."""
        ps = self.page_size
        for req, sample in zip(batch.reqs, batch.sample, strict=True):
            sender = self.senders.get(req.rid)
            if sender is None or req.rid in self.aborted or not req.pages:
                continue
            end = -(-req.computed_len // ps) if sample else req.computed_len // ps
            start = self.sent_pages[req.rid]
            self.sent_pages[req.rid] = end
            sender.send_chunk(req.pages[start:end], sample, _aux(req) if sample else None)
        return [r for r in produced if r.rid not in self.senders]

    def abort(self, rid: str) -> Req | None:
        """Abort a request still in the bootstrap queue (the scheduler handles the rest)."""
        req = self.bootstrap.pop(rid, None)
        if req is None:
            return None
        self.senders[rid].abort("aborted by the prefill client")
        self._forget(rid)
        req.finish(finish_reason("abort", message="aborted by the client"))
        return req

    def dropped(self, req: Req) -> None:
        """The scheduler gave up on a request before it held pages: close its room."""
        if req.rid in self.senders and req.rid not in self.transfers:
            message = (req.finish_reason or {}).get("message") or "dropped by prefill"
            self.senders[req.rid].abort(message)
            self._forget(req.rid)

    def _hold(self, req: Req) -> bool:
        """Scheduler hook: keep a leaving request's pages until its sender is final."""
        sender = self.senders.get(req.rid)
        if sender is None:
            return False
        if not req.finished or req.finish_reason.get("type") == "abort":
            # Aborted, or dropped after an engine error: reported elsewhere already.
            self.aborted.add(req.rid)
            sender.abort("aborted on prefill")
        self.transfers[req.rid] = req
        self.metrics.restart(req.rid)  # prefill_transfer_kv_cache starts
        return True

    def _forget(self, rid: str) -> str:
        self.metrics.close(rid)
        self.sent_pages.pop(rid, None)
        return self.senders.pop(rid).failure_reason or "KV transfer failed"

    def has_work(self) -> bool:
        return bool(self.bootstrap or self.transfers)

    def num_waiting(self) -> int:
        """Requests waiting for their decode (bootstrap queue) or their transfer."""
        return len(self.bootstrap) + len(self.transfers)

    def held_pages(self) -> int:
        return sum(len(r.pages) - r.num_cached_pages for r in self.transfers.values())

    def stats(self) -> dict:
        self._collect_transfers()
        return {
            "mode": "prefill",
            "bootstrap_queue": len(self.bootstrap),
            "transfer_queue": len(self.transfers),
            "held_pages": self.held_pages(),
            **self.metrics.summary(),
            **(self.manager.stats() if self.manager else {"transfer_backend": "fake"}),
        }

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
        for closer in self._closers:
            closer.close()


def _aux(req: Req) -> AuxData:
    """The first token and its logprobs, as decode must report them."""
    top = req.top_logprobs[-1] if req.top_logprobs_num and req.top_logprobs else []
    return AuxData(
        token_id=req.output_ids[-1],
        logprob=float(req.logprobs[-1]) if req.return_logprob and req.logprobs else 0.0,
        top_ids=[int(t) for t, _ in top],
        top_logprobs=[float(lp) for _, lp in top],
    )
