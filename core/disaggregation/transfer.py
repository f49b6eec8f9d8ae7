"""Transfer-engine seam: how KV bytes move from a prefill to a decode process.

A plugin returns ``TransferBackend`` registration objects whose factory builds a
``TransferEngine`` subclass. The base class owns everything that must not differ
between engines: validation and bookkeeping of registered memory, bounds checks
of every local and remote byte range (a peer's page list is untrusted input),
coalescing of contiguous runs, and accounting of in-flight transfers so that
leaks are visible. Subclasses implement the ``_``-prefixed primitives only.

Lifecycle: ``engine = factory(config)``; ``engine.register([...])``;
``info = engine.metadata()`` goes to the peer (JSON-serializable dict);
``peer = engine.connect(peer_info)``; ``h = engine.write(peer, runs, notify)``;
``h.wait(timeout)``; ``h.release()``; finally ``engine.close()``.

The contract every engine keeps (the conformance kit, ``pdcore.testing``,
checks each point):

- Threads. pdcore calls one engine from several threads at once: ``write``
  (and ``_poll``/``_release`` through handles) from a pool of transfer threads,
  several batches to the same peer at the same time; ``notifications`` from a
  poller thread; ``connect`` from handshake threads; ``register`` of a staging
  area, lazily, while writes of other regions are in flight. An engine's own
  state touched from these paths needs its own lock (the base class's
  bookkeeping is already safe), and concurrent batches to one peer must never
  interleave on a shared socket or stream. ``close`` runs last, once.
- Ordering. A notification becomes visible to the peer's ``notifications()``
  only after every byte of the write that carries it is in the peer's memory;
  each is delivered once. ``DONE`` means the bytes are in the peer's memory.
- Addresses. The remote address of a run is in the peer's address space: an
  address inside a region of the peer's ``metadata()``, never translated by pdcore.
- ``notifications()`` returns ``(peer, payload)`` pairs, ``peer`` being the id
  that this engine's ``connect()`` returns for the sender's metadata.
- ``connect`` is idempotent: the same metadata again returns the same peer id.
- Failures. A peer that refuses a write (memory not registered, engine closed),
  dies, or stops answering makes the write ``FAILED``, never ``DONE``.
- Deadlines. The caller stops waiting after ``options["transfer_timeout_s"]``
  (``handle.wait``) and fails the request; the engine itself ends every write,
  ``DONE`` or ``FAILED``, within that same deadline (``transfer_timeout``), even
  against a hung peer, since ``release()`` of a pending write cannot recall
  bytes already on their way nor free a thread blocked on the peer.
- ``close`` stops every thread and closes every socket and listener the engine
  opened (a server starts and closes engines many times in one process).
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdcore.disaggregation import runs as run_table
from pdcore.errors import PdcoreError
from pdcore.hookspecs import Availability
from pdcore.platform import MemoryKind


class TransferError(PdcoreError):
    """A transfer failed, or the engine refused a request (bad range, dead peer)."""


class TransferTimeout(TransferError):
    """A transfer did not finish within the caller's timeout."""


class TransferStatus(str, enum.Enum):
    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class MemoryRegion:
    """A contiguous buffer registered with the engine (e.g. one layer's K cache)."""

    addr: int
    length: int
    kind: MemoryKind = MemoryKind.DRAM
    device_id: int = 0

    @property
    def end(self) -> int:
        return self.addr + self.length

    def contains(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.end

    def to_dict(self) -> dict:
        return {
            "addr": self.addr,
            "length": self.length,
            "kind": self.kind.value,
            "device_id": self.device_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MemoryRegion:
        try:
            addr, length = int(d["addr"]), int(d["length"])
            kind, device_id = MemoryKind(d["kind"]), int(d["device_id"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # int(inf) overflows
            raise TransferError(f"malformed memory region in peer metadata: {d!r}") from e
        if addr < 0 or length <= 0:
            raise TransferError(f"invalid memory region in peer metadata: {d!r}")
        return cls(addr, length, kind, device_id)


@dataclass(frozen=True)
class TransferConfig:
    """What a transfer engine needs to start; ``options`` holds engine specifics.

    ``hostname``: address peers reach this engine on. ``ib_device``: the
    ``--disaggregation-ib-device`` value (RDMA NIC names), if any. ``options``, as
    a server fills it in every engine process: ``transfer_timeout_s`` (float, from
    ``PDCORE_``/``SGLANG_DISAGGREGATION_WRITE_TIMEOUT``, default 30), then the
    options of the plugin that registered this backend (its own flags, by
    ``dest``; see ``pdcore.plugin_options``). pdcore also reads ``aux_in_notice``
    (bool) if present; a server never sets it.
    """

    role: str = "prefill"
    hostname: str = "127.0.0.1"
    ib_device: str | None = None
    memory_kind: MemoryKind = MemoryKind.DRAM
    device_id: int = 0
    options: dict[str, Any] = field(default_factory=dict)


Run = tuple[int, int, int]  # (local_addr, remote_addr, length)

DEFAULT_TRANSFER_TIMEOUT_S = 30.0


def transfer_timeout(config: TransferConfig, engine_name: str) -> float:
    """``options["transfer_timeout_s"]``: the deadline after which ``_poll`` reports FAILED.

    Engines whose native library never times out a hung peer (NIXL) or only after
    its own fixed timers (Mooncake) enforce this deadline themselves.
    """
    value = config.options.get("transfer_timeout_s", DEFAULT_TRANSFER_TIMEOUT_S)
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = 0.0
    if not timeout > 0:
        raise TransferError(f"{engine_name} option transfer_timeout_s must be > 0, got {value!r}")
    return timeout


def coalesce_runs(
    runs: Iterable[Run],
    local_regions: Iterable[MemoryRegion] = (),
    remote_regions: Iterable[MemoryRegion] = (),
) -> list[Run]:
    """Merge runs that are contiguous on both sides (sorted by local address).

    Never merges across the start of a given region: adjacent buffers registered
    separately stay separate runs, since engines address one registration per run.
    """
    local_starts = {r.addr for r in local_regions}
    remote_starts = {r.addr for r in remote_regions}
    merged: list[list[int]] = []
    for local, remote, length in sorted(runs):
        if length <= 0:
            continue
        if merged:
            last = merged[-1]
            if (
                last[0] + last[2] == local
                and last[1] + last[2] == remote
                and local not in local_starts
                and remote not in remote_starts
            ):
                last[2] += length
                continue
        merged.append([local, remote, length])
    return [tuple(r) for r in merged]


@dataclass
class PeerInfo:
    """A connected peer: its id, engine-specific handle and registered regions."""

    peer_id: str
    regions: list[MemoryRegion]
    handle: Any = None


class TransferHandle:
    """One submitted batch; poll ``status()`` or ``wait()``, then ``release()``."""

    def __init__(self, engine: TransferEngine, token: Any, peer_id: str, nbytes: int):
        self._engine = engine
        self._token = token
        self.peer_id = peer_id
        self.nbytes = nbytes
        self.submitted_at = time.monotonic()
        self._final: TransferStatus | None = None
        self._released = False

    def status(self) -> TransferStatus:
        if self._final is not None:
            return self._final
        if self._released:
            raise TransferError("transfer handle used after release()")
        st = self._engine._poll(self._token)
        if st is not TransferStatus.PENDING:
            self._final = st
        return st

    def wait(self, timeout: float) -> None:
        """Block until done; raise ``TransferError`` on failure, ``TransferTimeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            st = self.status()
            if st is TransferStatus.DONE:
                return
            if st is TransferStatus.FAILED:
                detail = self._engine._failure_reason(self._token)
                raise TransferError(
                    f"{self._engine.name} transfer to {self.peer_id} failed"
                    + (f": {detail}" if detail else "")
                )
            if time.monotonic() >= deadline:
                raise TransferTimeout(
                    f"{self._engine.name} transfer to {self.peer_id} "
                    f"({self.nbytes} bytes) not done after {timeout:.1f}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def release(self) -> None:
        """Free the engine's resources for this transfer (idempotent)."""
        if not self._released:
            self._released = True
            self._engine._forget(self)


class TransferEngine(ABC):
    """Base class of transfer engines; see the module docstring for the lifecycle."""

    name: str = ""
    supports_notifications: bool = False  # delivers ``notify`` bytes to the peer
    memory_kinds: tuple[MemoryKind, ...] = (MemoryKind.DRAM,)

    def __init__(self, config: TransferConfig):
        if config.memory_kind not in self.memory_kinds:
            kinds = ", ".join(k.value for k in self.memory_kinds)
            raise TransferError(
                f"{self.name} cannot move {config.memory_kind.value} memory (supported: {kinds})"
            )
        self.config = config
        self._lock = threading.Lock()
        self._regions: list[MemoryRegion] = []
        self._peers: dict[str, PeerInfo] = {}
        self._inflight: dict[int, TransferHandle] = {}
        self._closed = False

    # ---- public API (template methods) -------------------------------------

    def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register buffers that transfers may read from or write into. May be
        called while writes of already registered regions are in flight."""
        self._check_open()
        regions = list(regions)
        for r in regions:
            if r.length <= 0 or r.addr <= 0:
                raise TransferError(f"cannot register empty or null region {r}")
            if r.kind not in self.memory_kinds:
                raise TransferError(f"{self.name} cannot register {r.kind.value} memory")
            for other in self._regions + [x for x in regions if x is not r]:
                if r.addr < other.end and other.addr < r.end:
                    raise TransferError(f"region {r} overlaps registered region {other}")
        self._register(regions)
        self._regions.extend(regions)

    def deregister(self, regions: Sequence[MemoryRegion]) -> None:
        for r in regions:
            if r not in self._regions:
                raise TransferError(f"region {r} is not registered")
        self._deregister(list(regions))
        for r in regions:
            self._regions.remove(r)

    @property
    def regions(self) -> list[MemoryRegion]:
        return list(self._regions)

    def metadata(self) -> dict:
        """JSON-serializable description a peer needs to ``connect`` to us."""
        self._check_open()
        return {
            "engine": self.name,
            "agent": self._agent_metadata(),
            "regions": [r.to_dict() for r in self._regions],
        }

    def connect(self, peer_metadata: dict) -> str:
        """Add a peer from its ``metadata()``; returns its peer id (idempotent: the
        same metadata returns the same id). Called from handshake threads, while
        writes to other peers run."""
        self._check_open()
        if not isinstance(peer_metadata, dict) or peer_metadata.get("engine") != self.name:
            got = peer_metadata.get("engine") if isinstance(peer_metadata, dict) else None
            raise TransferError(
                f"peer uses transfer engine {got!r}, this side uses {self.name!r}; "
                "both sides must pass the same --disaggregation-transfer-backend"
            )
        if "agent" not in peer_metadata or not isinstance(peer_metadata.get("regions", []), list):
            raise TransferError("malformed peer metadata: needs 'agent' and a 'regions' list")
        regions = [MemoryRegion.from_dict(d) for d in peer_metadata.get("regions", [])]
        peer_id, handle = self._connect(peer_metadata["agent"])
        self._peers[peer_id] = PeerInfo(peer_id, regions, handle)
        return peer_id

    def disconnect(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            self._disconnect(peer)

    def peers(self) -> list[str]:
        return list(self._peers)

    def write(
        self, peer_id: str, runs: Iterable[Run], notify: bytes | None = None
    ) -> TransferHandle:
        """Copy local byte runs into the peer's registered memory, asynchronously.

        A run is ``(local_addr, remote_addr, length)``; ``remote_addr`` is in the
        peer's address space (inside a region of its metadata). Every run is
        bounds-checked on both sides before anything is submitted; contiguous runs
        are coalesced. ``notify`` is delivered to the peer after all the data when
        the engine ``supports_notifications``. Called from several threads at
        once, to one peer or many.
        """
        self._check_open()
        peer = self._peers.get(peer_id)
        if peer is None:
            raise TransferError(f"unknown peer {peer_id!r}; connect() first")
        if notify is not None and not self.supports_notifications:
            raise TransferError(f"{self.name} does not support notifications")
        runs = runs if isinstance(runs, list) else list(runs)
        table = run_table.as_table(runs)
        if table is None:  # values beyond int64: the exact (slow) path, same errors
            runs = coalesce_runs(runs, self._regions, peer.regions)
            suspects = range(len(runs))
        else:
            merged = run_table.coalesce(
                table, [r.addr for r in self._regions], [r.addr for r in peer.regions]
            )
            ok = run_table.inside(merged[:, 0], merged[:, 2], self._regions)
            ok &= run_table.inside(merged[:, 1], merged[:, 2], peer.regions)
            runs = [tuple(r) for r in merged.tolist()]
            suspects = np.flatnonzero(~ok).tolist()
        if not runs:
            raise TransferError("empty transfer: no byte runs given")
        for i in suspects:
            self._check_run(peer, *runs[i])
        token = self._write(peer, runs, notify)
        handle = TransferHandle(self, token, peer_id, sum(r[2] for r in runs))
        with self._lock:
            self._inflight[id(handle)] = handle
        return handle

    def _check_run(self, peer: PeerInfo, local: int, remote: int, length: int) -> None:
        if not any(r.contains(local, length) for r in self._regions):
            raise TransferError(f"local range [{local:#x}, +{length}) is outside registered memory")
        if not any(r.contains(remote, length) for r in peer.regions):
            raise TransferError(
                f"remote range [{remote:#x}, +{length}) is outside the memory "
                f"peer {peer.peer_id} registered"
            )

    def notifications(self) -> list[tuple[str, bytes]]:
        """Notifications received since the last call, each once: ``(peer, payload)``,
        ``peer`` being what ``connect()`` returns for the sender. Called from a
        poller thread while writes run; a notification is listed only once all
        the bytes of its write are in this process's memory."""
        return self._get_notifications() if self.supports_notifications else []

    def inflight(self) -> int:
        """Handles submitted and not yet released (leak accounting)."""
        with self._lock:
            return len(self._inflight)

    def close(self) -> None:
        """Release handles, deregister memory and shut the engine down (idempotent)."""
        if self._closed:
            return
        for handle in list(self._inflight.values()):
            handle.release()
        for peer_id in list(self._peers):
            self.disconnect(peer_id)
        if self._regions:
            self._deregister(list(self._regions))
            self._regions.clear()
        self._closed = True
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._closed:
            raise TransferError(f"{self.name} engine is closed")

    def _forget(self, handle: TransferHandle) -> None:
        with self._lock:
            self._inflight.pop(id(handle), None)
        self._release(handle._token)

    # ---- primitives a backend implements ------------------------------------

    @abstractmethod
    def _register(self, regions: list[MemoryRegion]) -> None: ...

    @abstractmethod
    def _deregister(self, regions: list[MemoryRegion]) -> None: ...

    @abstractmethod
    def _agent_metadata(self) -> Any:
        """JSON-serializable data a peer passes to ``_connect`` (address, blob)."""

    @abstractmethod
    def _connect(self, agent_metadata: Any) -> tuple[str, Any]:
        """Make the peer reachable; return ``(peer_id, engine handle)``."""

    def _disconnect(self, peer: PeerInfo) -> None:
        """Forget a peer (default: nothing to do)."""

    @abstractmethod
    def _write(self, peer: PeerInfo, runs: list[Run], notify: bytes | None) -> Any:
        """Submit validated runs; return a token for ``_poll``/``_release``.

        Runs on several threads at once: tokens and per-peer state need a lock."""

    @abstractmethod
    def _poll(self, token: Any) -> TransferStatus: ...

    def _failure_reason(self, token: Any) -> str:
        return ""

    def _release(self, token: Any) -> None:
        """Free per-transfer resources (default: nothing to free)."""

    def _get_notifications(self) -> list[tuple[str, bytes]]:
        return []

    def _close(self) -> None:
        """Shut down the native engine (default: nothing to do)."""


@dataclass(frozen=True)
class TransferBackend:
    """Registration object returned from ``pdcore_transfer_backends``.

    ``factory(config)`` builds the engine and may import the native library;
    ``check()`` says whether that library loads here, with the reason if not.

    ``data_plane_authenticated``: set True only if the engine itself refuses a
    peer that cannot prove it belongs to the deployment (``--disaggregation-secret``
    seals the control plane only; nothing pdcore does reaches the engine's own
    ports). Left False, ``pdcore plugins`` says the data plane is unauthenticated
    and a PD server started with a secret warns that the secret does not cover it.
    """

    name: str
    factory: Callable[[TransferConfig], TransferEngine]
    memory_kinds: tuple[MemoryKind, ...] = (MemoryKind.DRAM,)
    check: Callable[[], Availability] = field(default=lambda: Availability.yes())
    description: str = ""
    data_plane_authenticated: bool = False

    kind = "transfer"

    def data_plane_note(self) -> str:
        """What ``pdcore plugins`` says about the data plane ("" if authenticated)."""
        if self.data_plane_authenticated:
            return ""
        return UNAUTHENTICATED_DATA_PLANE


UNAUTHENTICATED_DATA_PLANE = "data plane unauthenticated: keep on a private network"


def unauthenticated_data_plane_warning(backend: TransferBackend) -> str:
    """The start-up warning for a secret that does not cover ``backend``'s data plane
    ("" when it does)."""
    if backend.data_plane_authenticated:
        return ""
    return (
        f"--disaggregation-secret authenticates the PD control plane only: the "
        f"{backend.name} transfer engine accepts KV reads and writes from any peer that "
        "reaches its ports, and moves KV bytes unencrypted; keep prefill and decode "
        "on a private network"
    )
