"""A transfer engine over plain TCP: real bytes between processes, no native library.

Wire format, one connection per batch: ``D`` + (addr, length) + bytes for each
run, ``N`` + length + payload for an optional notification, then ``E``. The
receiver bounds-checks every run against its own registered regions before
copying (it never trusts the sender), then answers ``K`` or ``F`` + reason.

Threads (see the contract in ``pdcore.disaggregation.transfer``): ``_write`` is
called from several threads at once, so the token counter is taken under
``_tokens_lock``; each batch has its own connection, so batches never interleave
on a socket; notifications join the queue only after ``E``, when every byte of
the batch is in memory. ``example_tcp_timeout`` (else ``transfer_timeout_s``)
bounds every socket operation.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from pdcore.disaggregation.transfer import (
    PeerInfo,
    TransferConfig,
    TransferEngine,
    TransferError,
    TransferStatus,
    transfer_timeout,
)
from pdcore.platform import MemoryKind

logger = logging.getLogger(__name__)

_RUN = struct.Struct("!QQ")
_LEN = struct.Struct("!I")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection mid-message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class TcpTransferEngine(TransferEngine):
    name = "example-tcp"
    supports_notifications = True
    memory_kinds = (MemoryKind.DRAM,)

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        # --example-tcp-timeout (or PDCORE_EXAMPLE_TCP_TIMEOUT) as the server passed it;
        # else pdcore's per-write deadline (the conformance kit builds engines directly)
        self._timeout = float(
            config.options.get("example_tcp_timeout") or transfer_timeout(config, self.name)
        )
        self._agent = f"{config.role}-{uuid.uuid4().hex[:12]}"
        self._server = socket.create_server((config.hostname, 0))
        self._port = self._server.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="example-tcp")
        self._notifs: list[tuple[str, bytes]] = []
        self._notif_lock = threading.Lock()
        self._futures: dict[int, Future] = {}
        self._next = 0
        self._tokens_lock = threading.Lock()  # guards _next: _write runs on many threads
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()
        logger.info(
            "example-tcp %s engine on port %d, timeout %gs", config.role, self._port, self._timeout
        )

    # ---- sender side -------------------------------------------------------

    def _register(self, regions):
        """Nothing to pin: TCP reads and writes host memory directly."""

    def _deregister(self, regions):
        """Nothing was pinned."""

    def _agent_metadata(self):
        return {"agent": self._agent, "host": self.config.hostname, "port": self._port}

    def _connect(self, agent_metadata):
        try:
            addr = (str(agent_metadata["host"]), int(agent_metadata["port"]))
            return str(agent_metadata["agent"]), addr
        except (KeyError, TypeError, ValueError) as e:
            raise TransferError(f"malformed example-tcp peer metadata: {agent_metadata!r}") from e

    def _write(self, peer: PeerInfo, runs, notify):
        future = self._pool.submit(self._send_batch, peer.handle, runs, notify)
        with self._tokens_lock:
            self._next += 1
            token = self._next
        self._futures[token] = future
        return token

    def _send_batch(self, addr, runs, notify):
        with socket.create_connection(addr, timeout=self._timeout) as sock:
            for local, remote, length in runs:
                sock.sendall(b"D" + _RUN.pack(remote, length))
                sock.sendall(ctypes.string_at(local, length))
            if notify is not None:
                sender = self._agent.encode()
                sock.sendall(b"N" + _LEN.pack(len(sender)) + sender)
                sock.sendall(_LEN.pack(len(notify)) + notify)
            sock.sendall(b"E")
            reply = _recv_exact(sock, 1)
            if reply != b"K":
                (n,) = _LEN.unpack(_recv_exact(sock, 4))
                raise TransferError(f"peer refused the batch: {_recv_exact(sock, n).decode()}")

    def _poll(self, token):
        future = self._futures[token]
        if not future.done():
            return TransferStatus.PENDING
        return TransferStatus.FAILED if future.exception() else TransferStatus.DONE

    def _failure_reason(self, token):
        future = self._futures.get(token)
        exc = future.exception() if future and future.done() else None
        return f"{type(exc).__name__}: {exc}" if exc else ""

    def _release(self, token):
        self._futures.pop(token, None)

    def _get_notifications(self):
        with self._notif_lock:
            out, self._notifs = self._notifs, []
        return out

    def _close(self):
        try:  # close() alone does not wake a thread blocked in accept() on Linux
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self._acceptor.join(self._timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- receiver side -----------------------------------------------------

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        with conn:
            conn.settimeout(self._timeout)
            try:
                pending = []
                while (op := _recv_exact(conn, 1)) != b"E":
                    if op == b"D":
                        addr, length = _RUN.unpack(_recv_exact(conn, _RUN.size))
                        if not any(r.contains(addr, length) for r in self.regions):
                            raise TransferError(f"write to unregistered [{addr:#x}, +{length})")
                        ctypes.memmove(addr, _recv_exact(conn, length), length)
                    elif op == b"N":
                        (n,) = _LEN.unpack(_recv_exact(conn, 4))
                        sender = _recv_exact(conn, n).decode()
                        (n,) = _LEN.unpack(_recv_exact(conn, 4))
                        pending.append((sender, _recv_exact(conn, n)))
                    else:
                        raise TransferError(f"unknown opcode {op!r}")
                with self._notif_lock:
                    self._notifs.extend(pending)
                conn.sendall(b"K")
            except (OSError, TransferError, struct.error) as e:
                msg = str(e).encode()[:1000]
                try:
                    conn.sendall(b"F" + _LEN.pack(len(msg)) + msg)
                except OSError:
                    pass
