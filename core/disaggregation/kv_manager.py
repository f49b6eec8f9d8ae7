"""``KVManager``: one per side and TP rank; owns the transfer engine and every room.

``KVManager(role, ...)`` builds the role's manager: ``PrefillKVManager``
(``prefill_manager.py``: senders, decode's transfer requests and aborts, the
chunk queue and its transfer workers, staging) or ``DecodeKVManager``
(``decode_manager.py``: receivers, prefill's notices, peers lost, unsettled
rooms). This base holds what both do: memory registration, the endpoint info,
the control thread pool, the monitor thread, counters and close. The monitor
applies timeouts even to rooms nobody polls, so every room ends in SUCCESS or
FAILED and is then dropped. ``secret`` (``--disaggregation-secret``) seals every
control message and every in-band notice.

Locking rule
------------
One lock per manager, ``KVManager.lock``: a re-entrant lock shared by the
manager and all its rooms (a ``KVSender`` or ``KVReceiver`` has no lock of its
own). Prefill adds ``cond``, a condition on that same lock, to wait until a
room's last write ended.

It protects: the room table; every room's state (state, reason, in-flight
writes, abort reason, chunks received, ...); the counters ``stats()`` reports;
prefill's peers, pending transfer requests, abort marks, chunks waiting to be
staged, per-room write timings and transfer log; decode's unsettled rooms and
probe schedule.

Who takes it: the scheduler's polls (the engine thread: ``sender``,
``receiver``, ``drop_room``, a room's ``poll``/``send_chunk``/``send_request``/
``abort``, ``settled``, ``stats``, ``take_transfers``, staging); control-server
handler threads (prefill: ``accept_peer``'s bookkeeping, ``on_transfer_request``,
``on_abort``; decode: ``on_notice``); transfer worker threads (briefly, to count
a write and to end a chunk); the monitor thread (every ``MONITOR_TICK_S``, to
poll every room); decode's notification poller; the control thread pool
(decode's probes of unsettled rooms).

Nesting: this lock is the outermost one. Held, code may take the aux buffer's
lock, the transfer engine's bookkeeping lock (``engine.inflight()``) and the
thread pool's queue lock (``submit``); none of them calls back into the manager.
It is re-entrant because the monitor polls rooms under it and a room's methods
take it again.

Methods named ``*_locked`` must be called with the lock held: the manager's
``finalize_locked`` and ``hold_locked``, the rooms' ``fail_locked``,
``attach_locked``, ``decode_aborted_locked``, ``write_ended_locked`` and
``on_chunk_locked``. They change state, and at most queue work (``submit``),
touch the aux buffer or call ``on_change``: they never do I/O or wait.

No I/O under the lock: writes (``engine.write`` and the wait for them), control
posts and handshakes run on transfer workers or the control thread pool with the
lock released; under it they are only queued (``submit``). The one wait under
it, prefill's ``on_abort``, waits on ``cond``, which releases the lock. The
wake-up callback ``on_change`` is called with the lock held (by
``finalize_locked``), so it must not block: the engine's is a non-blocking write
to a socket pair.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from pdcore.disaggregation.auth import to_key
from pdcore.disaggregation.aux import DEFAULT_TOP_K, AuxBuffer
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.kv_args import FINAL, KVArgs, KVPoll
from pdcore.disaggregation.protocol import (
    AuxLayout,
    EndpointInfo,
    RankEndpoint,
    compat_fields,
    compat_hash,
)
from pdcore.disaggregation.transfer import (
    DEFAULT_TRANSFER_TIMEOUT_S,
    MemoryRegion,
    TransferConfig,
    unauthenticated_data_plane_warning,
)
from pdcore.envs import DisaggregationEnv
from pdcore.errors import PdcoreError
from pdcore.platform import MemoryKind

log = logging.getLogger(__name__)

MONITOR_TICK_S = 0.1
ROLES = ("prefill", "decode")


class KVManager:
    """Transfer engine, aux buffer and rooms of one side; ``KVManager(role, ...)``
    returns the role's subclass (the one constructor the engine and tests call)."""

    role = ""

    def __new__(cls, role: str, *args, **kwargs):
        if cls is KVManager:
            if role not in ROLES:
                raise ValueError(f"role must be 'prefill' or 'decode', got {role!r}")
            if role == "prefill":
                from pdcore.disaggregation.prefill_manager import PrefillKVManager as cls
            else:
                from pdcore.disaggregation.decode_manager import DecodeKVManager as cls
        return super().__new__(cls)

    def __init__(
        self,
        role: str,
        args: KVArgs,
        backend: str,
        *,
        env: DisaggregationEnv | None = None,
        hostname: str = "127.0.0.1",
        ib_device: str | None = None,
        engine_options: dict | None = None,
        bootstrap: BootstrapServer | None = None,
        aux_slots: int = 256,
        aux_top_k: int = DEFAULT_TOP_K,
        request_timeout: float = 5.0,
        secret: str | bytes | None = None,
        ranks: list[RankEndpoint] = (),
        staging_bytes: int = 0,
    ):
        if role != self.role:
            raise ValueError(f"{type(self).__name__} is the {self.role} manager, not {role!r}")
        from pdcore.registry import get_registry

        self.args = args
        self.backend = backend
        self.env = env or DisaggregationEnv.from_env()
        self._key = to_key(secret)  # seals control messages and in-band notices (or None)
        self.tp_rank = args.tp_rank
        self.ranks = list(ranks)  # decode leader: the other TP ranks' endpoints
        self.instance_id = f"{role}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.aux = AuxBuffer(aux_slots, aux_top_k)
        options = dict(engine_options or {})
        self.transfer_timeout = float(options.get("transfer_timeout_s", DEFAULT_TRANSFER_TIMEOUT_S))
        config = TransferConfig(
            role=role,
            hostname=hostname,
            ib_device=ib_device,
            memory_kind=args.memory_kind,
            device_id=args.device_id,
            options=options,
        )
        registration = get_registry().get("transfer", backend)
        if self._key is not None and (warning := unauthenticated_data_plane_warning(registration)):
            log.warning(warning)  # once per manager: one per PD server (DP leader)
        self.engine = registration.factory(config)
        # Engines that carry a notification with the data (NIXL) tell decode that
        # a chunk arrived in band; the others use a control-plane ChunkDone.
        self.in_band_notices = bool(self.engine.supports_notifications)
        # Engines that cannot write host memory (cuda_ipc) get the aux row carried
        # in the last chunk's notice instead; ``aux_in_notice`` asks for that anyway.
        self.aux_inline = MemoryKind.DRAM not in self.engine.memory_kinds or bool(
            options.get("aux_in_notice")
        )
        self.lock = threading.RLock()  # see "Locking rule" in the module docstring
        self._rooms: dict = {}  # room id -> KVSender (prefill) or KVReceiver (decode)
        self.rooms_succeeded = 0
        self.rooms_failed = 0
        self.rooms_served_by_decode = 0
        self._closed = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._executor = ThreadPoolExecutor(4, thread_name_prefix=f"pd-{role}-ctl")
        # Called (from any thread) whenever a room may have changed state, so an
        # engine waiting only on PD work sleeps until then instead of polling.
        self.on_change = None
        self._init_role(staging_bytes)
        try:
            self._open(hostname, bootstrap, request_timeout, secret)
        except BaseException:
            self.close()
            raise
        self._spawn(self._monitor, "pd-monitor")
        self._start_role_threads()

    # ---- what each role adds ---------------------------------------------------

    def _init_role(self, staging_bytes: int) -> None:
        """The role's own state (no I/O: ``close`` must work right after)."""

    def _open(self, hostname, bootstrap, request_timeout, secret) -> None:
        """Register memory, build ``self.info`` and the role's servers and clients
        (each role's subclass does; the base has no role to open)."""
        raise TypeError(f"{type(self).__name__} has no role: build it as KVManager(role, ...)")

    def _start_role_threads(self) -> None:
        """Threads besides the monitor, started once the manager is open."""

    def _role_stats_locked(self) -> dict:
        """The role's counters, overriding the zeros ``stats`` starts from."""
        return {}

    def _room_ended_locked(self, room, state: KVPoll, reason: str) -> None:
        """Role bookkeeping when a room reaches a final state."""

    def _tick_locked(self) -> None:
        """Role housekeeping on every monitor tick."""

    def _stop_role(self) -> None:
        """Wake and stop the role's threads, close its servers and clients."""

    # ---- setup -----------------------------------------------------------------

    def _register_memory(self, extra: list[MemoryRegion] = ()) -> None:
        a = self.args
        kv = [MemoryRegion(p, n, a.memory_kind, a.device_id) for p, n in a.kv_buffers]
        kv.extend(extra)
        if self.aux_inline:  # the engine moves device memory only: aux rows ride the notice
            self.engine.register(kv)
        else:
            aux = MemoryRegion(self.aux.addr, self.aux.nbytes, MemoryKind.DRAM)
            self.engine.register([*kv, aux])

    def _endpoint_info(self, notify_addr: str = "") -> EndpointInfo:
        a = self.args
        aux = AuxLayout(self.aux.addr, self.aux.row_bytes, self.aux.num_slots, self.aux.top_k)
        fields = dict(
            instance_id=self.instance_id,
            role=self.role,
            tp_rank=a.tp_rank,
            tp_size=a.tp_size,
            page_size=a.page_size,
            kv_dtype=a.kv_dtype,
            layout=a.layout,
            model=a.model,
            transfer_backend=self.backend,
            transfer_metadata=self.engine.metadata(),
            kv_buffers=[p for p, _ in a.kv_buffers],
            page_bytes=a.page_bytes,
            num_pages=a.num_pages,
            aux=aux,
            compat_hash="",
            notify_addr=notify_addr,
            kv_heads_first=a.kv_heads_first,
            kv_heads_count=a.local_heads[1],
            ranks=self.ranks,
        )
        draft = EndpointInfo(**fields)
        return EndpointInfo(**{**fields, "compat_hash": compat_hash(compat_fields(draft))})

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ---- public API ------------------------------------------------------------

    @property
    def active_rooms(self) -> int:
        with self.lock:
            return len(self._rooms)

    def stats(self) -> dict:
        """Counters for metrics: rooms, bytes moved, seconds spent in transfers."""
        with self.lock:
            out = {
                "active_rooms": len(self._rooms),
                "rooms_succeeded": self.rooms_succeeded,
                "rooms_failed": self.rooms_failed,
                "rooms_served_by_decode": self.rooms_served_by_decode,
                "bytes_transferred": 0,
                "runs_written": 0,
                "transfer_seconds": 0.0,
                "inflight_transfers": self.engine.inflight(),
                "pending_requests": 0,
                "chunk_notices": "in-band" if self.in_band_notices else "control",
                "notices_in_band": 0,
                "rooms_unsettled": 0,
                "rooms_quarantine_expired": 0,
            }
            out.update(self._role_stats_locked())
            return out

    def close(self) -> None:
        """Fail every active room, stop threads and servers, close the engine."""
        if self._closed:
            return
        self._closed = True
        with self.lock:
            for room in list(self._rooms.values()):
                if room.state not in FINAL:
                    self.finalize_locked(room, KVPoll.FAILED, "KV manager closed")
        self._stop.set()
        self._stop_role()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(self.transfer_timeout + 1)
        self.engine.close()

    def submit(self, fn, *args):
        """Run ``fn`` on the control thread pool; its completion wakes the engine.
        Rooms post their control messages through this (never under the lock)."""
        future = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _: self._changed())
        return future

    def finalize_locked(self, room, state: KVPoll, reason: str) -> None:
        """Put ``room`` in final ``state`` and drop it; rooms call this to end."""
        room.state, room.reason = state, reason
        if self._rooms.get(room.room) is room:
            del self._rooms[room.room]
        if state is KVPoll.SUCCESS:
            self.rooms_succeeded += 1
        elif room.served_by_decode:
            self.rooms_served_by_decode += 1  # decode prefilled it itself: no failure
        else:
            self.rooms_failed += 1
            log.info("room %d failed (%s): %s", room.room, self.role, reason)
        self._room_ended_locked(room, state, reason)
        self._changed()

    # ---- shared internals ------------------------------------------------------

    def _check_new_room_locked(self, room: int) -> None:
        """Refuse a room id out of range or already open, and any room once closed."""
        if self._closed:
            raise PdcoreError("KV manager is closed")
        if not 0 < room < 1 << 64:
            raise PdcoreError(f"bootstrap_room must be in [1, 2**64), got {room}")
        if room in self._rooms:
            raise PdcoreError(f"room {room} is already active")

    def _changed(self) -> None:
        callback = self.on_change
        if callback is not None:
            try:
                callback()
            except Exception:  # a wake-up must never break a transfer
                log.exception("PD on_change callback failed")

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_TICK_S):
            with self.lock:
                for room in list(self._rooms.values()):
                    room.poll()
                self._tick_locked()
                busy = bool(self._rooms)
            if busy:  # timeouts and heartbeats change states without a message
                self._changed()
