"""``AscendTransferEngine``: pdcore's transfer seam over memfabric's ``TransferEngine``.

memfabric's writes are synchronous (``batch_transfer_sync_write`` returns when
the bytes landed, releasing the GIL meanwhile), so each ``write`` runs in a small
thread pool and ``_poll`` only looks at the future. Peers are found through the
shared config store by session id (``host:rpc_port``); the metadata exchanged by
pdcore carries that id plus the store URL and protocol, checked to match.

Not run on Ascend hardware when written; see the package docstring.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    PeerInfo,
    Run,
    TransferConfig,
    TransferEngine,
    TransferError,
    TransferStatus,
)
from pdcore.platform import MemoryKind
from pdcore_transfer_ascend.native import import_transfer_engine
from pdcore_transfer_ascend.return_codes import describe
from pdcore_transfer_ascend.settings import PROTOCOL_ENV, PROTOCOLS, MfSettings, mf_role

DEFAULT_TRANSFER_THREADS = 4


def mf_call(engine: Any, method: str, detail: str, *args: Any) -> None:
    """Call ``engine.method(*args)``; a non-zero return code or exception is a TransferError."""
    try:
        ret = getattr(engine, method)(*args)
    except Exception as e:
        raise TransferError(f"mf_adapter {method}({detail}) raised {type(e).__name__}: {e}") from e
    if ret != 0:
        raise TransferError(f"mf_adapter {method}({detail}) failed with {describe(ret)}")


def session_id(hostname: str, port: int) -> str:
    """memfabric's peer id ``host:port``; IPv6 hosts bracketed as SGLang does."""
    return f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"


class AscendTransferEngine(TransferEngine):
    """Moves NPU (HBM) KV pages between Ascend devices via memfabric (SDMA or device RDMA).

    Host DRAM is not offered: mf_adapter's ``register_memory`` goes to memfabric's
    device-memory segment in its transfer mode (``HybmDevUserLegacySegment``, IPC
    names of NPU memory), and its host path needs memfabric-allocated buffers that
    the Python binding does not expose.
    """

    name = "ascend"
    memory_kinds = (MemoryKind.NPU,)
    supports_notifications = False

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        self.settings = MfSettings.from_env()
        self.role = mf_role(config.role)
        threads = config.options.get("transfer_threads", DEFAULT_TRANSFER_THREADS)
        if not isinstance(threads, int) or threads < 1:
            raise TransferError(f"transfer_threads must be a positive integer, got {threads!r}")
        try:
            engine_cls = import_transfer_engine()
        except ImportError as e:
            raise TransferError(f"mf_adapter not importable: {e}") from e
        self._mf = engine_cls()
        self.session_id = session_id(config.hostname, self._mf.get_rpc_port())
        op_type = getattr(engine_cls.TransDataOpType, PROTOCOLS[self.settings.protocol])
        mf_call(
            self._mf,
            "initialize",
            f"store_url={self.settings.store_url!r}, session_id={self.session_id!r}, "
            f"role={self.role!r}, device_id={config.device_id}, "
            f"data_op_type={PROTOCOLS[self.settings.protocol]}",
            self.settings.store_url,
            self.session_id,
            self.role,
            config.device_id,
            op_type,
        )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="pdcore-ascend-transfer")
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()

    def _register(self, regions: list[MemoryRegion]) -> None:
        addrs = [r.addr for r in regions]
        lengths = [r.length for r in regions]
        detail = f"{len(regions)} region(s), {sum(lengths)} bytes"
        mf_call(self._mf, "batch_register_memory", detail, addrs, lengths)

    def _deregister(self, regions: list[MemoryRegion]) -> None:
        self._drain()  # a batch still copying from or into a buffer must end before it goes
        for r in regions:
            mf_call(self._mf, "unregister_memory", f"{r.addr:#x}", r.addr)

    def _agent_metadata(self) -> dict:
        return {
            "session_id": self.session_id,
            "store_url": self.settings.store_url,
            "protocol": self.settings.protocol,
        }

    def _connect(self, agent_metadata: Any) -> tuple[str, Any]:
        peer = agent_metadata.get("session_id") if isinstance(agent_metadata, dict) else None
        if not isinstance(peer, str) or not peer:
            raise TransferError(f"malformed ascend peer metadata: {agent_metadata!r}")
        if agent_metadata.get("store_url") != self.settings.store_url:
            raise TransferError(
                f"peer {peer} uses config store {agent_metadata.get('store_url')!r}, this side "
                f"{self.settings.store_url!r}: both sides must share one ASCEND_MF_STORE_URL"
            )
        if agent_metadata.get("protocol") != self.settings.protocol:
            raise TransferError(
                f"peer {peer} uses {PROTOCOL_ENV}={agent_metadata.get('protocol')!r}, this side "
                f"{self.settings.protocol!r}: both sides must use the same protocol"
            )
        return peer, peer

    def _write(self, peer: PeerInfo, runs: list[Run], notify: bytes | None) -> Future:
        locals_ = [r[0] for r in runs]
        remotes = [r[1] for r in runs]
        lengths = [r[2] for r in runs]
        detail = f"dest_session={peer.handle!r}, {len(runs)} run(s), {sum(lengths)} bytes"
        future = self._pool.submit(
            mf_call,
            self._mf,
            "batch_transfer_sync_write",
            detail,
            peer.handle,
            locals_,
            remotes,
            lengths,
        )
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _poll(self, token: Future) -> TransferStatus:
        if not token.done():
            return TransferStatus.PENDING
        if token.cancelled() or token.exception() is not None:
            return TransferStatus.FAILED
        return TransferStatus.DONE

    def _failure_reason(self, token: Future) -> str:
        if token.cancelled():
            return "cancelled before it started"
        return str(token.exception() or "")

    def _release(self, token: Future) -> None:
        token.cancel()  # only stops a batch not yet started; a running one finishes

    def _drain(self) -> None:
        with self._pending_lock:
            pending = list(self._pending)
        wait(pending)

    def _close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._mf.destroy()
