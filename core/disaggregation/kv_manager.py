"""``KVManager``: one per side and TP rank; owns the transfer engine and every room.

Prefill: answers the bootstrap server's handshakes and transfer requests, and
pushes chunks through worker threads (``THREAD_POOL_SIZE`` threads over
``QUEUE_SIZE`` queues, rooms sharded by id so one slow room cannot hold up all).
Decode: handshakes through ``BootstrapClient`` and listens for prefill's notices
(in band with the data when the engine supports notifications, as NIXL does;
else over the control plane).
A monitor thread applies timeouts even to rooms nobody polls, so every room ends
in SUCCESS or FAILED and is then dropped.
``secret`` (``--disaggregation-secret``) seals every control message and every
in-band notice; decode drops in-band notices that do not verify.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from pdcore.disaggregation.auth import AuthError, ReplayGuard, open_sealed, seal, to_key
from pdcore.disaggregation.aux import DEFAULT_TOP_K, AuxBuffer, AuxData
from pdcore.disaggregation.bootstrap import BootstrapClient, BootstrapServer
from pdcore.disaggregation.control import ControlError, ControlServer, request
from pdcore.disaggregation.kv_args import FINAL, KVArgs, KVPoll
from pdcore.disaggregation.protocol import (
    SERVED_BY_DECODE,
    Abort,
    Ack,
    AuxLayout,
    ChunkDone,
    EndpointInfo,
    ErrorReply,
    HandshakeError,
    Heartbeat,
    HeartbeatReply,
    Message,
    RankEndpoint,
    RoomFailed,
    TransferRequest,
    check_compat,
    compat_fields,
    compat_hash,
)
from pdcore.disaggregation.protocol import decode as decode_message
from pdcore.disaggregation.protocol import encode as encode_message
from pdcore.disaggregation.receiver import KVReceiver
from pdcore.disaggregation.sender import KVSender
from pdcore.disaggregation.transfer import (
    DEFAULT_TRANSFER_TIMEOUT_S,
    MemoryRegion,
    TransferConfig,
    TransferError,
    unauthenticated_data_plane_warning,
)
from pdcore.envs import DisaggregationEnv
from pdcore.errors import PdcoreError
from pdcore.platform import MemoryKind

log = logging.getLogger(__name__)

MONITOR_TICK_S = 0.1
NOTICE_TIMEOUT_S = 5.0
# Decode reads in-band notices every NOTIFY_POLL_MIN_S right after one arrived,
# backing off to NOTIFY_POLL_MAX_S while none come (a long prefill sends nothing
# for seconds; polling at 1 ms then cost 2% of a core that prefill needed).
NOTIFY_POLL_MIN_S = 0.001
NOTIFY_POLL_MAX_S = 0.008
# With no room open nothing is polled (an idle decode took ~7% of a core polling NIXL
# every 8 ms); still, stale notices are drained this often.
NOTIFY_IDLE_S = 1.0
# Decode re-sends aborts of unsettled rooms (pages prefill may still write) this often.
UNSETTLED_PROBE_S = 1.0
UNSETTLED = "decode gave up on this room earlier; confirm no write into its pages runs"
TRANSFER_LOG_LEN = 4096  # per-room records kept until take_transfers() reads them


class Target(NamedTuple):
    """One decode rank a prefill writes to: its engine peer id and its pages."""

    peer_id: str
    heads_first: int
    heads_count: int
    kv_buffers: tuple[int, ...]
    page_bytes: int


class ChunkTask(NamedTuple):
    """A chunk queued for a transfer worker. ``staged``: ``(peer id, runs, staging
    offset)`` per decode rank when the leader staged the chunk (else None: direct)."""

    sender: object
    chunk: int
    src: list
    dst: list
    is_last: bool
    aux: object
    staged: list | None = None


class Tombstone(NamedTuple):
    """An abort mark: a prefill room that failed, or that decode gave up on (or served
    itself) before prefill opened it. Late messages for the room are refused, and a
    request that opens it fails at once, until the mark expires (``BOOTSTRAP_TIMEOUT``)."""

    reason: str
    at: float
    served_by_decode: bool = False


class TransferRecord(NamedTuple):
    """One prefill room's KV transfer, for metrics: monotonic first-write start and
    success time, bytes written, seconds spent inside writes (GB/s = nbytes / busy_s)."""

    room: int
    started: float
    ended: float
    nbytes: int
    busy_s: float


def page_spans(src, dst) -> list[tuple[int, int, int]]:
    """``(first src page, first dst page, count)`` for runs consecutive on both sides."""
    spans: list[list[int]] = []
    for s, d in zip(src, dst, strict=True):
        if spans and spans[-1][0] + spans[-1][2] == s and spans[-1][1] + spans[-1][2] == d:
            spans[-1][2] += 1
        else:
            spans.append([s, d, 1])
    return [(s, d, n) for s, d, n in spans]


class KVManager:
    """Transfer engine, aux buffer and rooms of one side (``role``: prefill or decode)."""

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
        if role not in ("prefill", "decode"):
            raise ValueError(f"role must be 'prefill' or 'decode', got {role!r}")
        from pdcore.registry import get_registry

        self.role = role
        self.args = args
        self.backend = backend
        self.env = env or DisaggregationEnv.from_env()
        self._key = to_key(secret)
        self._notice_guard = ReplayGuard()
        self.tp_rank = args.tp_rank
        self.ranks = list(ranks)  # decode leader: the other TP ranks' endpoints
        self.staging_bytes = staging_bytes
        self.staging = None  # prefill: StagingArea, made by the first staged chunk
        self._to_stage: list[ChunkTask] = []
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
        self.notices_in_band = 0
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rooms: dict[int, KVSender | KVReceiver] = {}
        self.bytes_transferred = 0
        self.runs_written = 0  # transfer descriptors posted (one per contiguous run)
        self.transfer_seconds = 0.0
        self.rooms_succeeded = 0
        self.rooms_failed = 0
        self.rooms_served_by_decode = 0
        # Decode: FAILED rooms whose prefill may still write their pages (``settled``).
        self._unsettled: dict[int, tuple[str, float]] = {}
        self._probing: set[str] = set()
        self._probe_after: dict[str, float] = {}
        self.rooms_quarantine_expired = 0
        # Metrics hook: per-room write timing, moved to transfer_log when the room succeeds.
        self._room_io: dict[int, list] = {}
        self.transfer_log: deque[TransferRecord] = deque(maxlen=TRANSFER_LOG_LEN)
        self._closed = False
        self._stop = threading.Event()
        self._room_opened = threading.Event()  # wakes the idle notice poller (decode)
        self._threads: list[threading.Thread] = []
        self._executor = ThreadPoolExecutor(4, thread_name_prefix=f"pd-{role}-ctl")
        # Called (from any thread) whenever a room may have changed state, so an
        # engine waiting only on PD work sleeps until then instead of polling.
        self.on_change = None
        self._notices: ControlServer | None = None
        self.client: BootstrapClient | None = None
        try:
            self._register_memory()
            if role == "decode":
                self._notices = ControlServer(hostname, 0, self._on_notice, self._key)
            self.info = self._endpoint_info()
            if role == "decode":
                self.client = BootstrapClient(
                    self.info, self.env, self._on_peer_lost, request_timeout, secret
                )
            else:
                self._init_prefill(bootstrap)
        except BaseException:
            self.close()
            raise
        self._spawn(self._monitor, "pd-monitor")
        if role == "decode" and self.in_band_notices:
            self._spawn(self._poll_notifications, "pd-notifications")

    # ---- setup -----------------------------------------------------------------

    def _register_memory(self) -> None:
        a = self.args
        kv = [MemoryRegion(p, n, a.memory_kind, a.device_id) for p, n in a.kv_buffers]
        if self.role == "prefill" and a.tp_size > 1:  # every chunk is staged: allocate now
            kv.append(self._make_staging())
        if self.aux_inline:  # the engine moves device memory only: aux rows ride the notice
            self.engine.register(kv)
        else:
            aux = MemoryRegion(self.aux.addr, self.aux.nbytes, MemoryKind.DRAM)
            self.engine.register([*kv, aux])

    def _endpoint_info(self) -> EndpointInfo:
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
            notify_addr=self._notices.address if self._notices else "",
            kv_heads_first=a.kv_heads_first,
            kv_heads_count=a.local_heads[1],
            ranks=self.ranks,
        )
        draft = EndpointInfo(**fields)
        return EndpointInfo(**{**fields, "compat_hash": compat_hash(compat_fields(draft))})

    def _make_staging(self) -> MemoryRegion:
        from pdcore.disaggregation.staging import StagingArea

        a = self.args
        device = getattr(a.owner, "device", "cpu")
        self.staging = StagingArea(self.staging_bytes, device)
        return MemoryRegion(self.staging.addr, self.staging.nbytes, a.memory_kind, a.device_id)

    def _init_prefill(self, bootstrap: BootstrapServer | None) -> None:
        self._peers: dict[str, tuple[EndpointInfo, str]] = {}
        self._targets: dict[str, list[Target]] = {}
        self._pending: dict[int, tuple[TransferRequest, float]] = {}
        self._aborted: dict[int, Tombstone] = {}
        n_queues = self.env.queue_size
        per_queue = max(1, self.env.thread_pool_size // n_queues)
        self._queues = [queue.SimpleQueue() for _ in range(n_queues)]
        for i, q in enumerate(self._queues):
            for j in range(per_queue):
                self._spawn(lambda q=q: self._worker(q), f"pd-transfer-{i}.{j}")
        if bootstrap is not None:
            bootstrap.register(self)

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ---- public API ------------------------------------------------------------

    def sender(self, room: int) -> KVSender:
        """Prefill: the room's sender, READY once decode's ``TransferRequest`` is here."""
        self._check_role("prefill")
        _check_room(room)
        with self._lock:
            if room in self._rooms:
                raise PdcoreError(f"room {room} is already active")
            s = KVSender(self, room)
            self._rooms[room] = s
            aborted = self._aborted.pop(room, None)
            pending = self._pending.pop(room, None)
            if aborted is not None:
                s.served_by_decode = aborted.served_by_decode
                s._fail_locked(aborted.reason)
            elif pending is not None:
                self._attach_locked(s, pending[0])
            return s

    def receiver(self, room: int, bootstrap_addr: str) -> KVReceiver:
        """Decode: the room's receiver; handshakes with ``bootstrap_addr`` (``host:port``)."""
        self._check_role("decode")
        _check_room(room)
        with self._lock:
            if room in self._rooms:
                raise PdcoreError(f"room {room} is already active")
            fut = self.submit(self.client.handshake, bootstrap_addr)
            r = KVReceiver(self, room, bootstrap_addr, fut)
            self._rooms[room] = r
            self._room_opened.set()
            return r

    def drop_room(self, room: int, bootstrap_addr: str) -> None:
        """Decode serves ``room``'s request itself: tell its prefill (``host:port``) to
        free the room and answer its half with a 2xx. Never blocks; a prefill that
        cannot be told fails the room at its bootstrap timeout instead."""
        self._check_role("decode")
        _check_room(room)
        with self._lock:
            if room in self._rooms:
                raise PdcoreError(f"room {room} is already active")
        msg = Abort(room, SERVED_BY_DECODE, self.instance_id, served_by_decode=True)
        self.submit(self._send_drop, bootstrap_addr, msg)

    def _send_drop(self, addr: str, msg: Abort) -> None:
        try:
            self.client.send(addr, msg)
        except (PdcoreError, OSError) as e:
            log.warning("could not tell prefill %s to drop room %d: %s", addr, msg.room, e)

    @property
    def active_rooms(self) -> int:
        with self._lock:
            return len(self._rooms)

    def stats(self) -> dict:
        """Counters for metrics: rooms, bytes moved, seconds spent in transfers."""
        with self._lock:
            return {
                "active_rooms": len(self._rooms),
                "rooms_succeeded": self.rooms_succeeded,
                "rooms_failed": self.rooms_failed,
                "rooms_served_by_decode": self.rooms_served_by_decode,
                "bytes_transferred": self.bytes_transferred,
                "runs_written": self.runs_written,
                "transfer_seconds": self.transfer_seconds,
                "inflight_transfers": self.engine.inflight(),
                "pending_requests": len(getattr(self, "_pending", {})),
                "chunk_notices": "in-band" if self.in_band_notices else "control",
                "notices_in_band": self.notices_in_band,
                "rooms_unsettled": len(self._unsettled),
                "rooms_quarantine_expired": self.rooms_quarantine_expired,
            }

    def take_transfers(self) -> list[TransferRecord]:
        """Prefill: the records of rooms that succeeded since the last call, oldest first."""
        with self._lock:
            out = list(self.transfer_log)
            self.transfer_log.clear()
            return out

    def close(self) -> None:
        """Fail every active room, stop threads and servers, close the engine."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for room in list(self._rooms.values()):
                if room.state not in FINAL:
                    self._finalize(room, KVPoll.FAILED, "KV manager closed")
        self._stop.set()
        self._room_opened.set()
        for q in getattr(self, "_queues", []):
            for _ in range(len(self._threads)):
                q.put(None)
        if self.client is not None:
            self.client.close()
        if self._notices is not None:
            self._notices.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(self.transfer_timeout + 1)
        self.engine.close()

    # ---- shared internals ------------------------------------------------------

    def _check_role(self, role: str) -> None:
        if self.role != role:
            raise PdcoreError(f"this is the {self.role} KV manager, not the {role} one")
        if self._closed:
            raise PdcoreError("KV manager is closed")

    def _changed(self) -> None:
        callback = self.on_change
        if callback is not None:
            try:
                callback()
            except Exception:  # a wake-up must never break a transfer
                log.exception("PD on_change callback failed")

    def submit(self, fn, *args):
        """Run ``fn`` on the control thread pool; its completion wakes the engine."""
        future = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _: self._changed())
        return future

    def _finalize(self, room: KVSender | KVReceiver, state: KVPoll, reason: str) -> None:
        """Enter a final state and drop the room (caller holds the lock)."""
        room.state, room.reason = state, reason
        if self._rooms.get(room.room) is room:
            del self._rooms[room.room]
        io = self._room_io.pop(room.room, None)
        if state is KVPoll.SUCCESS:
            self.rooms_succeeded += 1
            if io is not None:
                start, nbytes, busy = io
                self.transfer_log.append(
                    TransferRecord(room.room, start, time.monotonic(), nbytes, busy)
                )
        else:
            if getattr(room, "served_by_decode", False):
                self.rooms_served_by_decode += 1  # decode prefilled it itself: no failure
            else:
                self.rooms_failed += 1
                log.info("room %d failed (%s): %s", room.room, self.role, reason)
            if self.role == "prefill":
                self._aborted[room.room] = Tombstone(
                    reason, time.monotonic(), room.served_by_decode
                )
        self._cond.notify_all()
        self._changed()

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_TICK_S):
            with self._lock:
                for room in list(self._rooms.values()):
                    room.poll()
                if self.role == "prefill":
                    self._expire_locked()
                busy = bool(self._rooms)
            if busy:  # timeouts and heartbeats change states without a message
                self._changed()

    # ---- prefill internals -----------------------------------------------------

    def accept_peer(self, peer: EndpointInfo) -> EndpointInfo:
        """Bootstrap server: check compatibility, connect decode's engine, return our info."""
        check_compat(self.info, peer)
        peer_id = self.engine.connect(peer.transfer_metadata)
        heads = peer.layout.num_kv_heads
        leader_count = peer.kv_heads_count or heads
        if not _heads_fit(peer.kv_heads_first, leader_count, heads):
            raise HandshakeError(
                f"decode leader claims KV heads [{peer.kv_heads_first}, "
                f"{peer.kv_heads_first + leader_count}) of a model with {heads}"
            )
        targets = [
            Target(
                peer_id, peer.kv_heads_first, leader_count, tuple(peer.kv_buffers), peer.page_bytes
            )
        ]
        for r in peer.ranks:
            if len(r.kv_buffers) != len(peer.kv_buffers) or not _heads_fit(
                r.kv_heads_first, r.kv_heads_count, heads
            ):
                raise HandshakeError(f"decode TP rank {r.tp_rank} describes a malformed KV pool")
            rid = self.engine.connect(r.transfer_metadata)
            targets.append(
                Target(rid, r.kv_heads_first, r.kv_heads_count, tuple(r.kv_buffers), r.page_bytes)
            )
        with self._lock:
            self._peers[peer.instance_id] = (peer, peer_id)
            self._targets[peer.instance_id] = targets
        return self.info

    def on_transfer_request(self, msg: TransferRequest) -> Message:
        with self._lock:
            peer = self._peers.get(msg.decode_peer_id)
            if peer is None:
                return ErrorReply(f"unknown decode peer {msg.decode_peer_id!r}", "unknown_peer")
            info = peer[0]
            bad = [p for p in msg.dst_pages if not 0 < p < info.num_pages]
            if bad or not 0 <= msg.aux_slot < info.aux.num_slots or msg.room <= 0:
                return ErrorReply(
                    f"room {msg.room}: page ids {bad[:8]} or aux slot {msg.aux_slot} out of range",
                    "bad_request",
                )
            if msg.room in self._aborted:
                return ErrorReply(f"room {msg.room} aborted: {self._aborted[msg.room].reason}")
            sender = self._rooms.get(msg.room)
            if sender is None:
                self._pending[msg.room] = (msg, time.monotonic())
            elif sender.request is not None:
                return ErrorReply(f"duplicate transfer request for room {msg.room}")
            else:
                self._attach_locked(sender, msg)
        self._changed()
        return Ack()

    def on_abort(self, msg: Abort) -> Message:
        """Decode aborted (or serves the request itself): fail the room and answer once
        no write into its pages runs. A room not opened yet is remembered, so its
        request, when it comes, fails (or ends as served by decode) at once."""
        served = msg.served_by_decode
        reason = SERVED_BY_DECODE if served else f"aborted by decode: {msg.reason}"
        with self._lock:
            self._pending.pop(msg.room, None)
            sender = self._rooms.get(msg.room)
            if sender is None:
                self._aborted[msg.room] = Tombstone(reason, time.monotonic(), served)
                return Ack()
            if sender.state not in FINAL and not sender.abort_reason:
                sender.served_by_decode = served
            sender._fail_locked(reason)
            self._changed()
            self._cond.wait_for(lambda: sender.inflight == 0, self.transfer_timeout + 1)
            return Ack(sender.inflight == 0)

    def _attach_locked(self, sender: KVSender, msg: TransferRequest) -> None:
        sender.request = msg
        sender.peer, sender.peer_id = self._peers[msg.decode_peer_id]
        if sender.state is KVPoll.WAITING_FOR_DECODE:
            sender.state = KVPoll.READY

    def _expire_locked(self) -> None:
        horizon = time.monotonic() - self.env.bootstrap_timeout
        for table in (self._pending, self._aborted):
            for room in [r for r, entry in table.items() if entry[1] < horizon]:
                del table[room]

    def _submit_chunk(self, sender, chunk, src, dst, is_last, aux) -> None:
        task = ChunkTask(sender, chunk, src, dst, is_last, aux)
        if self._needs_staging(sender):
            with self._lock:  # stage_chunks() runs them after this forward
                self._to_stage.append(task)
            return
        self._enqueue(task)

    def _enqueue(self, task: ChunkTask) -> None:
        self._queues[task.sender.room % len(self._queues)].put(task)

    def _needs_staging(self, sender) -> bool:
        """A decode rank's heads are not whole pages of ours (MLA latents always are)."""
        if self.args.layout.is_mla:
            return False
        if self.args.tp_size > 1:
            return True
        targets = self._targets[sender.request.decode_peer_id]
        return len(targets) > 1 or targets[0][1:3] != self.args.local_heads

    @property
    def has_staging_work(self) -> bool:
        with self._lock:
            return bool(self._to_stage)

    def take_staging_pages(self) -> list[list[int]]:
        """Prefill leader: the source pages of every chunk waiting to be staged."""
        with self._lock:
            return [t.src for t in self._to_stage]

    def stage_chunks(self, pages: list[list[int]], full, gather_s: float = 0.0) -> None:
        """Prefill leader, right after the forward that finished these chunks: copy
        each decode rank's heads of ``full`` (``[buffers, pages, page_size, all heads,
        dim]``, the pages of ``take_staging_pages()`` in order) into staging blocks
        and queue their writes. Gather (``gather_s``, shared by page count) and copy
        time count as transfer time: a staged room's GB/s includes its staging."""
        import torch

        from pdcore.disaggregation.staging import RankTarget, StagingFull, page_runs

        with self._lock:
            tasks, self._to_stage = self._to_stage[: len(pages)], self._to_stage[len(pages) :]
        if self.staging is None and tasks:
            self.engine.register([self._make_staging()])
        offset = 0
        total_pages = max(1, sum(len(t.src) for t in tasks))
        for task in tasks:
            n = len(task.src)
            started = time.monotonic()
            block_all = full[:, offset : offset + n]
            offset += n
            staged, error = [], ""
            try:
                for t in self._targets[task.sender.request.decode_peer_id]:
                    block = block_all[..., t.heads_first : t.heads_first + t.heads_count, :]
                    nbytes = block.numel() * block.element_size()
                    off = self.staging.alloc(nbytes, self.transfer_timeout) if n else 0
                    if n:
                        self.staging.view(off, tuple(block.shape), block.dtype).copy_(block)
                    target = RankTarget(t.heads_first, t.heads_count, t.kv_buffers, t.page_bytes)
                    runs = page_runs(self.staging.addr + off, target, task.dst) if n else []
                    staged.append((t.peer_id, runs, off if n else None))
            except (StagingFull, TimeoutError) as e:
                error = f"chunk {task.chunk} of room {task.sender.room}: {e}"
            if error:
                for _, _, off in staged:
                    if off is not None:
                        self.staging.free(off)
                self._chunk_finished(task, error)
                continue
            if n and full.device.type != "cpu":  # copies are async on accelerators
                torch.accelerator.synchronize(full.device)
            spent = time.monotonic() - started + gather_s * n / total_pages
            with self._lock:
                self.transfer_seconds += spent
                io = self._room_io.setdefault(task.sender.room, [started, 0, 0.0])
                io[2] += spent
            self._enqueue(task._replace(staged=staged))

    def _worker(self, q: queue.SimpleQueue) -> None:
        while True:
            task = q.get()
            if task is None:
                return
            try:
                error = self._transfer_chunk(task)
            finally:
                for _, _, off in task.staged or ():
                    if off is not None:
                        self.staging.free(off)
            self._chunk_finished(task, error)

    def _chunk_finished(self, task: ChunkTask, error: str) -> None:
        sender = task.sender
        with self._lock:
            sender.inflight -= 1
            if error:
                sender._fail_locked(error)
            if sender.abort_reason and sender.inflight == 0 and sender.state not in FINAL:
                self._finalize(sender, KVPoll.FAILED, sender.abort_reason)
            elif task.is_last and not error:
                sender.last_done = True
            if sender.last_done and sender.inflight == 0 and sender.state not in FINAL:
                self._finalize(sender, KVPoll.SUCCESS, "")
            self._cond.notify_all()
        self._changed()
        if error and sender.peer is not None:
            self._notify(sender.peer.notify_addr, RoomFailed(sender.room, error))

    def _direct_writes(self, task: ChunkTask) -> list[tuple[str, list]]:
        """``(peer id, runs)`` per decode rank, read straight from our pages (same
        heads on both sides, or an MLA latent every rank holds whole)."""
        # Page ranges contiguous on both sides first, then one run per buffer and
        # range: 60 runs instead of 60 x pages for a fresh pool. This thread shares
        # the GIL with the forward pass; per-page Python work here cost NIXL writes
        # ~100 ms per 2k-token chunk on a 2-core machine.
        spans = page_spans(task.src, task.dst)
        pb = self.args.page_bytes
        writes = []
        for t in self._targets[task.sender.request.decode_peer_id]:
            runs = [
                (lb + s * pb, rb + d * pb, n * pb)
                for (lb, _), rb in zip(self.args.kv_buffers, t.kv_buffers, strict=True)
                for s, d, n in spans
            ]
            writes.append((t.peer_id, runs))
        return writes

    def _transfer_chunk(self, task: ChunkTask) -> str:
        """Write one chunk to every decode rank (and the aux row if last), then tell
        decode; '' or an error. Decode's leader rank is written last: its write
        carries the in-band notice, so every other rank's bytes landed before it."""
        sender, chunk, src, is_last, aux = task.sender, task.chunk, task.src, task.is_last, task.aux
        if sender.abort_reason or sender.state in FINAL:
            return ""
        peer = sender.peer
        slot = None
        aux_row = b""
        try:
            if task.staged is not None:
                per_rank = [(peer_id, runs) for peer_id, runs, _ in task.staged]
            else:
                per_rank = self._direct_writes(task)
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
                    handle.wait(self.transfer_timeout)
                finally:
                    handle.release()
                with self._lock:
                    spent = time.monotonic() - start
                    self.bytes_transferred += handle.nbytes
                    self.runs_written += len(write)
                    self.transfer_seconds += spent
                    io = self._room_io.setdefault(sender.room, [start, 0, 0.0])
                    io[1] += handle.nbytes
                    io[2] += spent
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

    def _notify_abort(self, sender: KVSender, reason: str) -> None:
        msg = Abort(sender.room, reason, self.instance_id)
        self.submit(self._notify, sender.peer.notify_addr, msg)

    def _notify(self, addr: str, msg: Message) -> None:
        try:
            request(addr, msg, NOTICE_TIMEOUT_S, self._key)
        except ControlError as e:
            log.info("could not tell decode %s about room %d: %s", addr, msg.room, e)

    # ---- decode internals ------------------------------------------------------

    def _on_notice(self, msg: Message) -> Message:
        if isinstance(msg, Heartbeat):
            return HeartbeatReply(self.instance_id)
        if not isinstance(msg, ChunkDone | RoomFailed | Abort):
            return ErrorReply(f"decode does not take {type(msg).__name__}", "bad_request")
        with self._lock:
            receiver = self._rooms.get(msg.room)
            if receiver is None:
                return Ack(False)
            if isinstance(msg, ChunkDone):
                receiver._on_chunk(msg)
            elif isinstance(msg, RoomFailed):
                receiver._fail_locked(f"prefill failed the transfer: {msg.reason}")
            else:
                receiver._fail_locked(f"aborted by prefill: {msg.reason}")
        self._changed()
        return Ack()

    def _poll_notifications(self) -> None:
        """Decode: turn the engine's in-band notifications into chunk notices."""
        delay = NOTIFY_POLL_MIN_S
        while not self._stop.is_set():
            try:
                notes = self.engine.notifications()
            except Exception as e:  # a closing engine; the monitor handles rooms
                if self._stop.is_set():
                    return
                log.warning("reading transfer notifications failed: %s", e)
                notes = []
            if not notes:
                if not self._rooms:  # nothing can arrive for us: sleep until a room opens
                    self._room_opened.clear()
                    if not self._rooms:  # (a room opened before the clear is seen here)
                        self._room_opened.wait(NOTIFY_IDLE_S)
                    delay = NOTIFY_POLL_MIN_S
                    continue
                self._stop.wait(delay)
                delay = min(delay * 2, NOTIFY_POLL_MAX_S)
                continue
            delay = NOTIFY_POLL_MIN_S
            for agent, payload in notes:
                if self._key is not None:
                    try:
                        payload = open_sealed(self._key, payload, self._notice_guard)
                    except AuthError as e:
                        log.warning("ignoring a transfer notification from %s: %s", agent, e)
                        continue
                try:
                    msg = decode_message(payload)
                except Exception:
                    log.warning("ignoring an undecodable transfer notification")
                    continue
                if isinstance(msg, ChunkDone):
                    with self._lock:
                        self.notices_in_band += 1
                    self._on_notice(msg)

    def _on_peer_lost(self, addr: str, reason: str, may_write: bool = False) -> None:
        """Fail every room of prefill ``addr``. ``may_write``: it only went silent (not
        known dead or restarted), so the pages of rooms it had wait to be settled."""
        with self._lock:
            for room in list(self._rooms.values()):
                if room.addr == addr:
                    room._fail_locked(reason, unsettled=may_write)
        self._changed()

    # ---- decode: pages a failed room's prefill may still write -------------------

    def _hold_locked(self, room: int, addr: str) -> None:
        deadline = time.monotonic() + self.env.quarantine_timeout
        self._unsettled[room] = (addr, deadline)

    def settled(self, room: int) -> bool:
        """Decode: may the pages of this FAILED room be reused? True at once for a room
        prefill cannot write any more; for an unsettled one once prefill confirmed an
        abort (it resumed, or a restarted instance never knew the room), its bootstrap
        address refuses connections (the process is gone), or ``quarantine_timeout``
        passed. Asking again retries the confirmation (one probe per prefill at a time)."""
        with self._lock:
            entry = self._unsettled.get(room)
            if entry is None:
                return True
            addr, deadline = entry
            if time.monotonic() >= deadline:
                del self._unsettled[room]
                self.rooms_quarantine_expired += 1
                log.warning(
                    "room %d: prefill %s never confirmed it stopped writing; reusing its "
                    "pages after %gs (SGLANG_DISAGGREGATION_QUARANTINE_TIMEOUT)",
                    room, addr, self.env.quarantine_timeout,
                )  # fmt: skip
                return True
            if addr not in self._probing and time.monotonic() >= self._probe_after.get(addr, 0):
                rooms = [r for r, (a, _) in self._unsettled.items() if a == addr]
                self._probing.add(addr)
                self.submit(self._probe_unsettled, addr, rooms)
            return False

    def _probe_unsettled(self, addr: str, rooms: list[int]) -> None:
        """Abort each room again at ``addr``; a confirmed one is settled."""
        try:
            for room in rooms:
                try:
                    reply = self.client.send(addr, Abort(room, UNSETTLED, self.instance_id))
                except ControlError as e:
                    if isinstance(e.__cause__, ConnectionRefusedError):  # nobody listens
                        with self._lock:
                            for r in rooms:
                                self._unsettled.pop(r, None)
                        return
                    raise
                if getattr(reply, "ok", False):
                    with self._lock:
                        self._unsettled.pop(room, None)
        except (ControlError, PdcoreError) as e:
            log.debug("prefill %s not answering aborts of unsettled rooms yet: %s", addr, e)
        finally:
            with self._lock:
                self._probing.discard(addr)
                self._probe_after[addr] = time.monotonic() + UNSETTLED_PROBE_S


def _heads_fit(first: int, count: int, total: int) -> bool:
    return 0 <= first and 0 < count and first + count <= total


def _check_room(room: int) -> None:
    if not 0 < room < 1 << 64:
        raise PdcoreError(f"bootstrap_room must be in [1, 2**64), got {room}")
