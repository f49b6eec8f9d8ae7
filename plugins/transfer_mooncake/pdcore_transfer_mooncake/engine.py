"""``MooncakeTransferEngine``: the pdcore transfer seam on ``mooncake.engine.TransferEngine``.

Completion is polled per run, not per batch. In mooncake 0.3.13 the Python
binding has no non-blocking status for a multi-run batch:
``get_batch_transfer_status`` busy-waits in C++ until the batch is done or its
own timeout passes, and ``transfer_check_status`` looks at task 0 only. So each
(coalesced) run is submitted as a one-task batch with ``transfer_submit_write``
and polled with ``transfer_check_status``, which frees a batch once it reports
done (1) or failed (-1); a batch is never polled again after that.

Dead peers, observed with two processes on 127.0.0.1 over TCP (mooncake
0.3.13.post1, non-CUDA wheel):

* peer SIGKILLed after a first write opened its segment: ``transfer_check_status``
  returns -1 within ~1-60 ms (connection reset or refused), ~1 s once the TCP
  transport retries connecting. A first write to a dead peer fails at submit
  (batch id 0, handshake refused) at once.
* peer SIGSTOPped (alive, never answers) after a first write: the TCP transport
  gives up after 30 s without progress ("no transfer progress within 30s").
* peer SIGSTOPped before any write: the first ``transfer_submit_write`` blocks in
  the P2P handshake until Mooncake's fixed 60 s socket read timeout, then
  returns 0; ``write`` raises then. No Python API opens a segment in advance.

Otherwise a hung peer or a lost host is only bounded by Mooncake's own timers,
which differ per transport; ``options["transfer_timeout_s"]`` (default 30) is
a deadline from submission after which ``_poll`` reports FAILED itself.
Batches still running then are kept and reaped (freed) on later calls; the
local source memory may still be read by Mooncake until they end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import mooncake.engine as mc

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    PeerInfo,
    Run,
    TransferConfig,
    TransferEngine,
    TransferError,
    TransferStatus,
    transfer_timeout,
)
from pdcore.platform import MemoryKind

P2P = "P2PHANDSHAKE"
_FAILURES = {
    -1: "Mooncake reported the transfer failed (peer died or refused it; see Mooncake's log)",
    -2: "Mooncake timed the transfer out",
}


# Runs in flight per write. Mooncake's TCP transport rejects submissions once its
# queue is full ("queue-full"): a write of ~4000 page runs that cannot coalesce
# (fragmented pages) timed out and poisoned the peer. Later runs are submitted
# as earlier ones finish.
MAX_INFLIGHT_RUNS = 512


@dataclass
class _Write:
    """Batch ids of one ``write``, polled in order; ``done`` counts finished ones;
    ``pending`` holds runs not submitted yet (at most MAX_INFLIGHT_RUNS are out)."""

    batch_ids: list[int]
    deadline: float
    handle: object = None
    pending: list = field(default_factory=list)
    done: int = 0
    error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class MooncakeTransferEngine(TransferEngine):
    name = "mooncake"
    supports_notifications = False
    memory_kinds = (MemoryKind.DRAM, MemoryKind.VRAM)

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        opts = config.options
        self._protocol = str(opts.get("protocol") or ("rdma" if config.ib_device else "tcp"))
        metadata_server = str(opts.get("metadata_server") or P2P)
        device_name = str(opts.get("device_name") or config.ib_device or "")
        self._timeout = transfer_timeout(config, "mooncake")
        if config.memory_kind is MemoryKind.VRAM:
            self._require_cuda()
        self._te = mc.TransferEngine()
        rc = self._te.initialize(config.hostname, metadata_server, self._protocol, device_name)
        if rc != 0:
            raise TransferError(
                f"mooncake initialize({config.hostname!r}, {metadata_server!r}, "
                f"{self._protocol!r}, {device_name!r}) failed with {rc}; see Mooncake's log"
            )
        # Mooncake names this engine's segment host:rpc_port under P2P handshake,
        # and the given hostname under a metadata server (etcd, http, redis).
        host = config.hostname
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self._session = f"{host}:{self._te.get_rpc_port()}" if metadata_server == P2P else host
        self._orphans: list[int] = []
        self._orphan_lock = threading.Lock()

    @staticmethod
    def _require_cuda() -> None:
        if not getattr(mc, "SUPPORT_CUDA", True):
            raise TransferError(
                "this mooncake build has no CUDA support, so it cannot move VRAM; "
                "install pdcore-transfer-mooncake[cuda] (or [cuda13])"
            )

    # ---- memory ----------------------------------------------------------------

    def _register(self, regions: list[MemoryRegion]) -> None:
        done: list[MemoryRegion] = []
        for r in regions:
            if r.kind is MemoryKind.VRAM:
                self._require_cuda()
            rc = self._te.register_memory(r.addr, r.length)
            if rc != 0:
                for d in done:
                    self._te.unregister_memory(d.addr)
                raise TransferError(f"mooncake register_memory failed with {rc} for {r}")
            done.append(r)

    def _deregister(self, regions: list[MemoryRegion]) -> None:
        failed = [r for r in regions if self._te.unregister_memory(r.addr) != 0]
        if failed:
            raise TransferError(f"mooncake unregister_memory failed for {failed}")

    # ---- peers -----------------------------------------------------------------

    def _agent_metadata(self) -> dict:
        return {"session": self._session, "protocol": self._protocol}

    def _connect(self, agent_metadata) -> tuple[str, str]:
        try:
            session = str(agent_metadata["session"])
            protocol = str(agent_metadata["protocol"])
        except (KeyError, TypeError) as e:
            raise TransferError(f"malformed mooncake peer metadata: {agent_metadata!r}") from e
        if protocol != self._protocol:
            raise TransferError(
                f"mooncake peer {session} uses protocol {protocol!r}, this side "
                f"{self._protocol!r}; both sides must use the same protocol"
            )
        return session, session

    # ---- transfers -------------------------------------------------------------

    def _write(self, peer: PeerInfo, runs: list[Run], notify: bytes | None) -> _Write:
        self._reap()
        w = _Write([], time.monotonic() + self._timeout, peer.handle)
        w.pending = list(reversed(runs))  # popped from the end, in order
        if not self._submit_more(w):
            self._orphan(w.batch_ids)
            raise TransferError(
                f"mooncake could not submit a write to {peer.peer_id} "
                "(peer unreachable, or its segment is gone)"
            )
        return w

    def _submit_more(self, w: _Write) -> bool:
        """Submit pending runs while fewer than MAX_INFLIGHT_RUNS are out; False on refusal."""
        while w.pending and len(w.batch_ids) - w.done < MAX_INFLIGHT_RUNS:
            local, remote, length = w.pending.pop()
            bid = self._te.transfer_submit_write(w.handle, local, remote, length)
            # 0 is the failure sentinel; older builds returned -1 cast to uint64.
            if bid <= 0 or bid >= 1 << 63:
                return False
            w.batch_ids.append(bid)
        return True

    def _poll(self, w: _Write) -> TransferStatus:
        with w.lock:
            if w.error:
                return TransferStatus.FAILED
            while True:
                while w.done < len(w.batch_ids):
                    rc = self._te.transfer_check_status(w.batch_ids[w.done])
                    if rc == 0:
                        break
                    w.done += 1  # any non-zero answer ends this batch id for us
                    if rc != 1:
                        w.error = _FAILURES.get(rc, f"transfer_check_status returned {rc}")
                        return TransferStatus.FAILED
                if not w.pending:
                    if w.done == len(w.batch_ids):
                        return TransferStatus.DONE
                    break
                if not self._submit_more(w):
                    w.error = "mooncake refused a submission mid-write (peer gone?)"
                    return TransferStatus.FAILED
                if w.done < len(w.batch_ids):
                    break
            if time.monotonic() >= w.deadline:
                w.error = (
                    f"not complete after transfer_timeout_s={self._timeout:g}s "
                    "(peer hung or unreachable; Mooncake reported no error)"
                )
                return TransferStatus.FAILED
            return TransferStatus.PENDING

    def _failure_reason(self, w: _Write) -> str:
        return w.error

    def _release(self, w: _Write) -> None:
        with w.lock:
            self._orphan(w.batch_ids[w.done :])
            w.done = len(w.batch_ids)
            w.pending = []

    def _orphan(self, batch_ids: list[int]) -> None:
        if batch_ids:
            with self._orphan_lock:
                self._orphans.extend(batch_ids)

    def _reap(self) -> None:
        """Poll abandoned batches so that Mooncake frees them once they end."""
        with self._orphan_lock:
            self._orphans = [b for b in self._orphans if self._te.transfer_check_status(b) == 0]

    def _close(self) -> None:
        self._reap()
        self._te = None  # the binding's destructor closes segments and the engine
