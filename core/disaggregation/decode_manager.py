"""Decode's ``KVManager``: receivers, prefill's notices, lost peers, unsettled rooms.

Handshakes through ``BootstrapClient`` and listens for prefill's notices (in band
with the data when the engine supports notifications, as NIXL does; else on its
own control server). In-band notices that do not verify against ``secret`` are
dropped. A FAILED room whose prefill may still write its pages stays
*unsettled* until prefill confirms (``settled``). The lock and its rule:
``kv_manager``.
"""

from __future__ import annotations

import logging
import threading
import time

from pdcore.disaggregation.auth import AuthError, ReplayGuard, open_sealed
from pdcore.disaggregation.bootstrap import BootstrapClient
from pdcore.disaggregation.control import ControlError, ControlServer
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import (
    SERVED_BY_DECODE,
    Abort,
    Ack,
    ChunkDone,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    Message,
    RoomFailed,
)
from pdcore.disaggregation.protocol import decode as decode_message
from pdcore.disaggregation.receiver import KVReceiver
from pdcore.errors import PdcoreError

log = logging.getLogger(__name__)

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


class DecodeKVManager(KVManager):
    """Built by ``KVManager("decode", ...)``; one per decode TP rank."""

    role = "decode"

    def _init_role(self, staging_bytes: int) -> None:
        self._notice_guard = ReplayGuard()
        self.notices_in_band = 0
        self._room_opened = threading.Event()  # wakes the idle notice poller
        # FAILED rooms whose prefill may still write their pages (``settled``).
        self._unsettled: dict[int, tuple[str, float]] = {}
        self._probing: set[str] = set()
        self._probe_after: dict[str, float] = {}
        self.rooms_quarantine_expired = 0
        self._notices: ControlServer | None = None
        self.client: BootstrapClient | None = None

    def _open(self, hostname, bootstrap, request_timeout, secret) -> None:
        self._register_memory()
        self._notices = ControlServer(hostname, 0, self._on_notice, self._key)
        self.info = self._endpoint_info(self._notices.address)
        self.client = BootstrapClient(
            self.info, self.env, self.on_peer_lost, request_timeout, secret
        )

    def _start_role_threads(self) -> None:
        if self.in_band_notices:
            self._spawn(self._poll_notifications, "pd-notifications")

    # ---- rooms -----------------------------------------------------------------

    def receiver(self, room: int, bootstrap_addr: str) -> KVReceiver:
        """The room's receiver; handshakes with ``bootstrap_addr`` (``host:port``)."""
        with self.lock:
            self._check_new_room_locked(room)
            fut = self.submit(self.client.handshake, bootstrap_addr)
            r = KVReceiver(self, room, bootstrap_addr, fut)
            self._rooms[room] = r
            self._room_opened.set()
            return r

    def drop_room(self, room: int, bootstrap_addr: str) -> None:
        """Decode serves ``room``'s request itself: tell its prefill (``host:port``) to
        free the room and answer its half with a 2xx. Never blocks; a prefill that
        cannot be told fails the room at its bootstrap timeout instead."""
        with self.lock:
            self._check_new_room_locked(room)
        msg = Abort(room, SERVED_BY_DECODE, self.instance_id, served_by_decode=True)
        self.submit(self._send_drop, bootstrap_addr, msg)

    def _send_drop(self, addr: str, msg: Abort) -> None:
        try:
            self.client.send(addr, msg)
        except (PdcoreError, OSError) as e:
            log.warning("could not tell prefill %s to drop room %d: %s", addr, msg.room, e)

    # ---- prefill's notices (control-server handler threads, notification poller) --

    def _on_notice(self, msg: Message) -> Message:
        if isinstance(msg, Heartbeat):
            return HeartbeatReply(self.instance_id)
        if not isinstance(msg, ChunkDone | RoomFailed | Abort):
            return ErrorReply(f"decode does not take {type(msg).__name__}", "bad_request")
        with self.lock:
            receiver = self._rooms.get(msg.room)
            if receiver is None:
                return Ack(False)
            if isinstance(msg, ChunkDone):
                receiver.on_chunk_locked(msg)
            elif isinstance(msg, RoomFailed):
                receiver.fail_locked(f"prefill failed the transfer: {msg.reason}")
            else:
                receiver.fail_locked(f"aborted by prefill: {msg.reason}")
        self._changed()
        return Ack()

    def _poll_notifications(self) -> None:
        """Turn the engine's in-band notifications into chunk notices."""
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
                # An unlocked read of the room table: a room opened meanwhile sets
                # _room_opened, which the second check or the wait sees.
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
                    with self.lock:
                        self.notices_in_band += 1
                    self._on_notice(msg)

    def on_peer_lost(self, addr: str, reason: str, may_write: bool = False) -> None:
        """``BootstrapClient``: fail every room of prefill ``addr``. ``may_write``: it
        only went silent (not known dead or restarted), so the pages of rooms it had
        wait to be settled."""
        with self.lock:
            for room in list(self._rooms.values()):
                if room.addr == addr:
                    room.fail_locked(reason, unsettled=may_write)
        self._changed()

    # ---- pages a failed room's prefill may still write -----------------------------

    def hold_locked(self, room: int, addr: str) -> None:
        """A failing receiver's pages wait for ``settled``: prefill ``addr`` had them."""
        deadline = time.monotonic() + self.env.quarantine_timeout
        self._unsettled[room] = (addr, deadline)

    def settled(self, room: int) -> bool:
        """May the pages of this FAILED room be reused? True at once for a room
        prefill cannot write any more; for an unsettled one once prefill confirmed an
        abort (it resumed, or a restarted instance never knew the room), its bootstrap
        address refuses connections (the process is gone), or ``quarantine_timeout``
        passed. Asking again retries the confirmation (one probe per prefill at a time)."""
        with self.lock:
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
                        with self.lock:
                            for r in rooms:
                                self._unsettled.pop(r, None)
                        return
                    raise
                if getattr(reply, "ok", False):
                    with self.lock:
                        self._unsettled.pop(room, None)
        except (ControlError, PdcoreError) as e:
            log.debug("prefill %s not answering aborts of unsettled rooms yet: %s", addr, e)
        finally:
            with self.lock:
                self._probing.discard(addr)
                self._probe_after[addr] = time.monotonic() + UNSETTLED_PROBE_S

    # ---- role hooks --------------------------------------------------------------

    def _role_stats_locked(self) -> dict:
        return {
            "notices_in_band": self.notices_in_band,
            "rooms_unsettled": len(self._unsettled),
            "rooms_quarantine_expired": self.rooms_quarantine_expired,
        }

    def _stop_role(self) -> None:
        self._room_opened.set()
        if self.client is not None:
            self.client.close()
        if self._notices is not None:
            self._notices.close()
