"""``NixlTransferEngine``: the pdcore transfer seam on ``nixl._api.nixl_agent``.

One agent per engine, named ``role-pid-uuid`` so that restarts and several
engines per process never collide. Its metadata blob (bytes) travels base64 in
pdcore's JSON metadata; the peer loads it with ``add_remote_agent``. A ``write``
is one NIXL WRITE request; ``notify`` rides on it, so NIXL delivers it only
after the data.

Dead peers, observed with two processes on 127.0.0.1 (nixl 1.5.1, nixl_cu13
wheel, UCX backend, no GPU):

* peer SIGKILLed before the write: ``transfer()`` raises
  ``nixlRemoteDisconnectError`` at once (UCX saw the endpoint die).
* peer SIGKILLed mid-transfer (UCX_TLS=tcp, so the copy takes a while):
  ``check_xfer_state`` raises ``nixlRemoteDisconnectError`` within ~20 ms.
* peer SIGSTOPped (alive, never answers; UCX_TLS=tcp, 256 MiB writes): the
  request stays "PROC" for at least 90 s; NIXL has no per-request timeout.

So ``options["transfer_timeout_s"]`` (default 30) is a deadline from
submission after which ``_poll`` reports FAILED itself; releasing such a
request asks NIXL to cancel it.
"""

from __future__ import annotations

import base64
import bisect
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nixl._api as nixl_api
import numpy as np
from nixl._api import nixl_agent, nixl_agent_config, nixl_thread_sync_t

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

log = logging.getLogger(__name__)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _descs(regions: list[MemoryRegion], addrs: list[int], lengths: list[int], side: str):
    """Nx3 (addr, len, device) array and the one memory kind of these runs.

    The base class has bounds-checked every run, so each lies in one region.
    """
    ordered = sorted(regions, key=lambda r: r.addr)
    starts = [r.addr for r in ordered]
    found = [ordered[bisect.bisect_right(starts, a) - 1] for a in addrs]
    kinds = {r.kind for r in found}
    if len(kinds) > 1:
        raise TransferError(
            f"nixl moves one memory kind per request; the {side} runs mix "
            + ", ".join(sorted(k.value for k in kinds))
        )
    table = np.array([addrs, lengths, [r.device_id for r in found]], dtype=np.uint64).T
    return np.ascontiguousarray(table), found[0].kind


@dataclass
class _Xfer:
    handle: Any
    deadline: float
    done: bool = False
    error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


# NIXL's progress thread sleeps this long between polls. nixl's Python wrapper
# hard-codes 0, a busy loop that takes a whole core from the engine even when
# idle (on 2 cores it slowed prefill several-fold); 100 us costs no throughput.
DEFAULT_PROGRESS_DELAY_US = 100
_AGENT_LOCK = threading.Lock()


def _agent_with_progress_delay(name: str, conf, delay_us: int) -> nixl_agent:
    """``nixl_agent(name, conf)`` with the progress-thread delay set to ``delay_us``."""
    bind = nixl_api.nixlBind
    make = bind.nixlAgent

    def with_delay(agent_name, agent_config):
        agent_config.pthrDelay = delay_us
        return make(agent_name, agent_config)

    with _AGENT_LOCK:
        bind.nixlAgent = with_delay
        try:
            return nixl_agent(name, conf)
        finally:
            bind.nixlAgent = make


class NixlTransferEngine(TransferEngine):
    name = "nixl"
    supports_notifications = True
    memory_kinds = (MemoryKind.DRAM, MemoryKind.VRAM)

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        self._backend = str(config.options.get("backend", "UCX"))
        self._timeout = transfer_timeout(config, "nixl")
        self._name = f"{config.role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # No listener thread: metadata goes through pdcore's handshake. RW sync
        # lets transfers and polls run from several threads at once.
        opts = config.options
        # UCX backend tuning: ``num_threads`` splits a request over worker threads
        # (nixl's own knob), ``num_workers`` gives the backend several UCX workers;
        # each UCX worker has its own CUDA streams for cuda_ipc copies.
        backend_init = {}
        if int(opts.get("num_threads", 0)) > 0:
            backend_init["num_threads"] = str(int(opts["num_threads"]))
        if int(opts.get("num_workers", 0)) > 0:
            backend_init["num_workers"] = str(int(opts["num_workers"]))
        conf = nixl_agent_config(
            enable_listen_thread=False,
            backends=[],
            sync_mode=nixl_thread_sync_t.NIXL_THREAD_SYNC_RW,
        )
        delay = int(opts.get("progress_delay_us", DEFAULT_PROGRESS_DELAY_US))
        try:
            self._agent = _agent_with_progress_delay(self._name, conf, delay)
            if self._backend in self._agent.get_plugin_list():
                self._agent.create_backend(self._backend, backend_init)
        except Exception as e:  # the binding raises its own exception types
            raise TransferError(f"cannot create NIXL agent: {_describe(e)}") from e
        if self._backend not in self._agent.backends:
            raise TransferError(
                f"NIXL backend {self._backend!r} is not available here "
                f"(plugins found: {', '.join(self._agent.get_plugin_list()) or 'none'})"
            )
        self._registered: dict[MemoryRegion, Any] = {}
        # Writes are posted one at a time. Several transfer threads post to the same
        # agent; twice in CI a write to one of two decode ranks never completed (its
        # staging space was never freed), and concurrent first use of a peer's
        # endpoint (UCX wires it up lazily) from two threads is the suspect. Posting
        # is short on GPUs (the copy runs after it); on CPUs the copy is CPU-bound.
        self._post_lock = threading.Lock()

    # ---- memory ----------------------------------------------------------------

    def _register(self, regions: list[MemoryRegion]) -> None:
        done: list[MemoryRegion] = []
        for r in regions:
            try:
                self._registered[r] = self._agent.register_memory(
                    [(r.addr, r.length, r.device_id, "")], r.kind.value, [self._backend]
                )
            except Exception as e:
                self._deregister(done)
                raise TransferError(f"nixl register_memory failed for {r}: {_describe(e)}") from e
            done.append(r)

    def _deregister(self, regions: list[MemoryRegion]) -> None:
        for r in regions:
            try:
                self._agent.deregister_memory(self._registered[r], [self._backend])
            except Exception as e:
                raise TransferError(f"nixl deregister_memory failed for {r}: {_describe(e)}") from e
            del self._registered[r]

    # ---- peers -----------------------------------------------------------------

    def _agent_metadata(self) -> dict:
        blob = self._agent.get_agent_metadata()
        return {"name": self._name, "blob": base64.b64encode(blob).decode("ascii")}

    def _connect(self, agent_metadata) -> tuple[str, str]:
        try:
            name = str(agent_metadata["name"])
            blob = base64.b64decode(agent_metadata["blob"], validate=True)
        except (KeyError, TypeError, ValueError) as e:
            raise TransferError(f"malformed nixl peer metadata: {agent_metadata!r}") from e
        try:
            loaded = self._agent.add_remote_agent(blob)
        except Exception as e:
            raise TransferError(f"nixl cannot load metadata of {name}: {_describe(e)}") from e
        loaded = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
        if loaded != name:
            raise TransferError(f"nixl peer metadata names {name!r} but holds agent {loaded!r}")
        return name, name

    def _disconnect(self, peer: PeerInfo) -> None:
        try:
            self._agent.remove_remote_agent(peer.handle)
        except Exception as e:  # a dead peer is not an error when forgetting it
            log.warning("nixl remove_remote_agent(%s): %s", peer.handle, _describe(e))

    # ---- transfers -------------------------------------------------------------

    def _write(self, peer: PeerInfo, runs: list[Run], notify: bytes | None) -> _Xfer:
        local, remote, lengths = (list(col) for col in zip(*runs, strict=True))
        local_descs, local_kind = _descs(self._regions, local, lengths, "local")
        remote_descs, remote_kind = _descs(peer.regions, remote, lengths, "remote")
        with self._post_lock:  # one poster at a time: see ``_post_lock``
            return self._post(peer, notify, (local_descs, local_kind), (remote_descs, remote_kind))

    def _post(self, peer: PeerInfo, notify: bytes | None, local, remote) -> _Xfer:
        (local_descs, local_kind), (remote_descs, remote_kind) = local, remote
        try:
            handle = self._agent.initialize_xfer(
                "WRITE",
                self._agent.get_xfer_descs(local_descs, local_kind.value),
                self._agent.get_xfer_descs(remote_descs, remote_kind.value),
                peer.handle,
                notify or b"",
                [self._backend],
            )
        except Exception as e:
            raise TransferError(
                f"nixl cannot create a write to {peer.peer_id}: {_describe(e)}"
            ) from e
        try:
            state = self._agent.transfer(handle)
        except Exception as e:  # nixlRemoteDisconnectError for a dead peer
            self._release_handle(handle)
            raise TransferError(f"nixl write to {peer.peer_id} failed: {_describe(e)}") from e
        if state == "ERR":
            self._release_handle(handle)
            raise TransferError(f"nixl write to {peer.peer_id} failed to post")
        return _Xfer(handle, time.monotonic() + self._timeout, done=state == "DONE")

    def _poll(self, x: _Xfer) -> TransferStatus:
        with x.lock:
            if x.error:
                return TransferStatus.FAILED
            if x.done:
                return TransferStatus.DONE
            try:
                state = self._agent.check_xfer_state(x.handle)
            except Exception as e:
                x.error = _describe(e)
                return TransferStatus.FAILED
            if state == "DONE":
                x.done = True
                return TransferStatus.DONE
            if state == "ERR":
                x.error = "NIXL reported the transfer as failed"
            elif time.monotonic() >= x.deadline:
                x.error = (
                    f"not complete after transfer_timeout_s={self._timeout:g}s "
                    "(peer hung or unreachable; NIXL reported no error)"
                )
            return TransferStatus.FAILED if x.error else TransferStatus.PENDING

    def _failure_reason(self, x: _Xfer) -> str:
        return x.error

    def _release(self, x: _Xfer) -> None:
        with x.lock:
            self._release_handle(x.handle)

    def _release_handle(self, handle) -> None:
        try:
            handle.release()  # cancels the request if it is still running
        except Exception as e:  # NIXL keeps an uncancellable handle and frees it later
            log.warning("nixl could not release %r: %s", handle, _describe(e))

    def _get_notifications(self) -> list[tuple[str, bytes]]:
        notifs = self._agent.get_new_notifs()
        return [
            (name.decode() if isinstance(name, bytes) else name, bytes(msg))
            for name, msgs in notifs.items()
            for msg in msgs
        ]

    def _close(self) -> None:
        self._agent = None  # the agent's destructor shuts UCX down
