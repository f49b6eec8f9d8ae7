"""Prefill's ``KVManager``: senders, decode's requests and aborts, the chunk queue.

Answers the bootstrap server's handshakes (``accept_peer``), transfer requests
and aborts, and pushes chunks through worker threads (``THREAD_POOL_SIZE``
threads over ``QUEUE_SIZE`` queues, rooms sharded by id so one slow room cannot
hold up all); ``ChunkWriter`` does each write. Chunks whose decode ranks hold
other heads than ours are staged first (``stage_chunks``). The lock and its rule:
``kv_manager``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import NamedTuple

from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.chunk_writer import NOTICE_TIMEOUT_S, ChunkTask, ChunkWriter, Target
from pdcore.disaggregation.control import ControlError, request
from pdcore.disaggregation.kv_args import KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import (
    SERVED_BY_DECODE,
    Abort,
    Ack,
    EndpointInfo,
    ErrorReply,
    HandshakeError,
    Message,
    RoomFailed,
    TransferRequest,
    check_compat,
)
from pdcore.disaggregation.sender import KVSender
from pdcore.disaggregation.transfer import MemoryRegion

log = logging.getLogger(__name__)

TRANSFER_LOG_LEN = 4096  # per-room records kept until take_transfers() reads them


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


class PrefillKVManager(KVManager):
    """Built by ``KVManager("prefill", ...)``; one per prefill TP rank."""

    role = "prefill"

    def _init_role(self, staging_bytes: int) -> None:
        self.cond = threading.Condition(self.lock)  # a room's writes ended (on_abort waits)
        self.staging_bytes = staging_bytes
        self.staging = None  # StagingArea, made by the first staged chunk (or at start)
        self._to_stage: list[ChunkTask] = []
        self._peers: dict[str, tuple[EndpointInfo, str]] = {}
        self._targets: dict[str, list[Target]] = {}
        self._pending: dict[int, tuple[TransferRequest, float]] = {}
        self._aborted: dict[int, Tombstone] = {}
        self._queues: list[queue.SimpleQueue] = []
        self.bytes_transferred = 0
        self.runs_written = 0  # transfer descriptors posted (one per contiguous run)
        self.transfer_seconds = 0.0
        # Per-room write timing, moved to transfer_log when the room succeeds.
        self._room_io: dict[int, list] = {}
        self.transfer_log: deque[TransferRecord] = deque(maxlen=TRANSFER_LOG_LEN)

    def _open(self, hostname, bootstrap: BootstrapServer | None, request_timeout, secret) -> None:
        # Under TP every chunk is staged: allocate (and register) the area now.
        self._register_memory([self._make_staging()] if self.args.tp_size > 1 else [])
        self.info = self._endpoint_info()
        self.writer = ChunkWriter(
            self.engine,
            self.aux,
            self.args,
            self._key,
            in_band_notices=self.in_band_notices,
            aux_inline=self.aux_inline,
            timeout=self.transfer_timeout,
            on_write=self.record_write,
        )
        n_queues = self.env.queue_size
        per_queue = max(1, self.env.thread_pool_size // n_queues)
        self._queues = [queue.SimpleQueue() for _ in range(n_queues)]
        for i, q in enumerate(self._queues):
            for j in range(per_queue):
                self._spawn(lambda q=q: self._worker(q), f"pd-transfer-{i}.{j}")
        if bootstrap is not None:
            bootstrap.register(self)

    def _make_staging(self) -> MemoryRegion:
        from pdcore.disaggregation.staging import StagingArea

        a = self.args
        device = getattr(a.owner, "device", "cpu")
        self.staging = StagingArea(self.staging_bytes, device)
        return MemoryRegion(self.staging.addr, self.staging.nbytes, a.memory_kind, a.device_id)

    # ---- rooms -----------------------------------------------------------------

    def sender(self, room: int) -> KVSender:
        """The room's sender, READY once decode's ``TransferRequest`` is here."""
        with self.lock:
            self._check_new_room_locked(room)
            s = KVSender(self, room)
            self._rooms[room] = s
            aborted = self._aborted.pop(room, None)
            pending = self._pending.pop(room, None)
            if aborted is not None:
                s.decode_aborted_locked(aborted.reason, aborted.served_by_decode)
            elif pending is not None:
                self._attach_locked(s, pending[0])
            return s

    def take_transfers(self) -> list[TransferRecord]:
        """The records of rooms that succeeded since the last call, oldest first."""
        with self.lock:
            out = list(self.transfer_log)
            self.transfer_log.clear()
            return out

    # ---- the bootstrap server's calls (control-server handler threads) ------------

    def accept_peer(self, peer: EndpointInfo) -> EndpointInfo:
        """Check compatibility, connect decode's engine, return our info."""
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
        with self.lock:
            self._peers[peer.instance_id] = (peer, peer_id)
            self._targets[peer.instance_id] = targets
        return self.info

    def on_transfer_request(self, msg: TransferRequest) -> Message:
        """Decode's pages for a room: the room turns READY (or waits for its sender)."""
        with self.lock:
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
        with self.lock:
            self._pending.pop(msg.room, None)
            sender = self._rooms.get(msg.room)
            if sender is None:
                self._aborted[msg.room] = Tombstone(reason, time.monotonic(), served)
                return Ack()
            sender.decode_aborted_locked(reason, served)
            self._changed()
            self.cond.wait_for(lambda: sender.inflight == 0, self.transfer_timeout + 1)
            return Ack(sender.inflight == 0)

    def _attach_locked(self, sender: KVSender, msg: TransferRequest) -> None:
        peer, peer_id = self._peers[msg.decode_peer_id]
        sender.attach_locked(msg, peer, peer_id)

    # ---- chunks: the room's calls, the workers, staging -----------------------------

    def submit_chunk(self, sender: KVSender, chunk, src, dst, is_last, aux) -> None:
        """Queue a chunk the sender accepted (called without the lock)."""
        targets = self._targets[sender.request.decode_peer_id]
        task = ChunkTask(sender, chunk, src, dst, is_last, aux, targets)
        if self._needs_staging(targets):
            with self.lock:  # stage_chunks() runs them after this forward
                self._to_stage.append(task)
            return
        self._enqueue(task)

    def notify_abort(self, sender: KVSender, reason: str) -> None:
        """Tell the sender's decode that prefill gave the room up (on the thread pool)."""
        msg = Abort(sender.room, reason, self.instance_id)
        self.submit(self._notify, sender.peer.notify_addr, msg)

    def record_write(self, room: int, started: float, nbytes: int, runs: int, spent: float):
        """Count one finished write of ``room`` (called by transfer workers)."""
        with self.lock:
            self.bytes_transferred += nbytes
            self.runs_written += runs
            self.transfer_seconds += spent
            io = self._room_io.setdefault(room, [started, 0, 0.0])
            io[1] += nbytes
            io[2] += spent

    def _enqueue(self, task: ChunkTask) -> None:
        self._queues[task.sender.room % len(self._queues)].put(task)

    def _needs_staging(self, targets: list[Target]) -> bool:
        """A decode rank's heads are not whole pages of ours (MLA latents always are)."""
        if self.args.layout.is_mla:
            return False
        if self.args.tp_size > 1:
            return True
        return len(targets) > 1 or targets[0][1:3] != self.args.local_heads

    @property
    def has_staging_work(self) -> bool:
        with self.lock:
            return bool(self._to_stage)

    def take_staging_pages(self) -> list[list[int]]:
        """Prefill leader: the source pages of every chunk waiting to be staged."""
        with self.lock:
            return [t.src for t in self._to_stage]

    def stage_chunks(self, pages: list[list[int]], full, gather_s: float = 0.0) -> None:
        """Prefill leader, right after the forward that finished these chunks: copy
        each decode rank's heads of ``full`` (``[buffers, pages, page_size, all heads,
        dim]``, the pages of ``take_staging_pages()`` in order) into staging blocks
        and queue their writes. Gather (``gather_s``, shared by page count) and copy
        time count as transfer time: a staged room's GB/s includes its staging."""
        import torch

        from pdcore.disaggregation.staging import RankTarget, StagingFull, page_runs

        with self.lock:
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
                for t in task.targets:
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
            with self.lock:
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
                error = self.writer.write(task)
            finally:
                for _, _, off in task.staged or ():
                    if off is not None:
                        self.staging.free(off)
            self._chunk_finished(task, error)

    def _chunk_finished(self, task: ChunkTask, error: str) -> None:
        sender = task.sender
        with self.lock:
            sender.write_ended_locked(task.is_last, error)
            self.cond.notify_all()
        self._changed()
        if error and sender.peer is not None:
            self._notify(sender.peer.notify_addr, RoomFailed(sender.room, error))

    def _notify(self, addr: str, msg: Message) -> None:
        try:
            request(addr, msg, NOTICE_TIMEOUT_S, self._key)
        except ControlError as e:
            log.info("could not tell decode %s about room %d: %s", addr, msg.room, e)

    # ---- role hooks --------------------------------------------------------------

    def _room_ended_locked(self, room: KVSender, state: KVPoll, reason: str) -> None:
        io = self._room_io.pop(room.room, None)
        if state is KVPoll.SUCCESS:
            if io is not None:
                start, nbytes, busy = io
                self.transfer_log.append(
                    TransferRecord(room.room, start, time.monotonic(), nbytes, busy)
                )
        else:
            self._aborted[room.room] = Tombstone(reason, time.monotonic(), room.served_by_decode)
        self.cond.notify_all()

    def _tick_locked(self) -> None:
        horizon = time.monotonic() - self.env.bootstrap_timeout
        for table in (self._pending, self._aborted):
            for room in [r for r, entry in table.items() if entry[1] < horizon]:
                del table[room]

    def _role_stats_locked(self) -> dict:
        return {
            "bytes_transferred": self.bytes_transferred,
            "runs_written": self.runs_written,
            "transfer_seconds": self.transfer_seconds,
            "pending_requests": len(self._pending),
        }

    def _stop_role(self) -> None:
        for q in self._queues:
            for _ in range(len(self._threads)):
                q.put(None)


def _heads_fit(first: int, count: int, total: int) -> bool:
    return 0 <= first and 0 < count and first + count <= total
