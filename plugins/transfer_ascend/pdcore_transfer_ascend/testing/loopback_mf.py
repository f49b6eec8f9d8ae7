"""A CPU stand-in for mf_adapter that really moves bytes between processes over TCP.

It has the names and signatures of memfabric's binding (module-level
``create_config_store`` and ``set_log_level``; ``TransferEngine`` with
``TransDataOpType``, ``get_rpc_port``, ``initialize``, ``batch_register_memory``,
``unregister_memory``, ``batch_transfer_sync_write``, ``destroy``) and answers
with memfabric's integer return codes (``return_codes``).

The config store is a small TCP service at ``ASCEND_MF_STORE_URL`` where each
engine registers its session id (``host:rpc_port``) on ``initialize``. A write
asks the store whether the destination session exists, connects to that
session's address (the engine listens on the port ``get_rpc_port`` returned) and
sends each local range's bytes; the peer copies them into its registered memory
at the remote addresses. Both ends check every range against the memory
registered with them, so a bad address fails with a code instead of corrupting
memory. Host memory only: what the fake NPU host (``pdcore_ascend.testing``)
puts the KV pool in.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import socket
import socketserver
import struct
import sys
import threading
import types

from pdcore.platform import MemoryKind

OK = 0
INVALID_PARAM = -2000  # SMEM_INVALID_PARAM
NOT_EXIST = -2007  # SMEM_NOT_EXIST
NOT_INIT = -2008  # SMEM_NOT_INIT
NOT_CONNECTED = -2014  # SMEM_NOT_CONNECTED
STORE_FAILED = -1  # SMEM_ERROR
ROLES = ("Prefill", "Decode")
TIMEOUT_S = 10.0


class TransDataOpType(enum.IntEnum):
    SDMA = 1
    DEVICE_RDMA = 8


# ---- framing: 4-byte length + JSON header, then raw bytes -----------------------------


def _send(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(struct.pack("!I", len(head)) + head + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> dict:
    (size,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, size))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _request(address: str, header: dict) -> dict:
    with socket.create_connection(_host_port(address), timeout=TIMEOUT_S) as sock:
        _send(sock, header)
        return _recv(sock)


# ---- the config store -------------------------------------------------------------------


class _Store(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]):
        self.sessions: set[str] = set()
        super().__init__(address, _StoreHandler)


class _StoreHandler(socketserver.BaseRequestHandler):
    def handle(self):
        msg = _recv(self.request)
        sessions = self.server.sessions
        if msg["op"] == "put":
            sessions.add(msg["session"])
        elif msg["op"] == "drop":
            sessions.discard(msg["session"])
        _send(self.request, {"known": msg["session"] in sessions})


_stores: dict[str, _Store] = {}


def create_config_store(store_url: str) -> int:
    """Serve the store at ``tcp://host:port`` from this process (until it exits)."""
    if store_url in _stores:
        return OK
    if not store_url.startswith("tcp://"):
        return INVALID_PARAM
    try:
        store = _Store(_host_port(store_url[len("tcp://") :]))
    except (OSError, ValueError):
        return STORE_FAILED
    threading.Thread(target=store.serve_forever, daemon=True, name="fake-mf-store").start()
    _stores[store_url] = store
    return OK


def set_log_level(level: int) -> int:
    return OK if 0 <= level <= 3 else INVALID_PARAM


# ---- the engine ---------------------------------------------------------------------------


class _Regions:
    """Registered ``(addr, length)`` ranges; a run must lie inside one of them."""

    def __init__(self):
        self._ranges: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, addr: int, length: int) -> None:
        with self._lock:
            self._ranges[addr] = length

    def remove(self, addr: int) -> None:
        with self._lock:
            self._ranges.pop(addr, None)

    def contains(self, addr: int, length: int) -> bool:
        with self._lock:
            return any(a <= addr and addr + length <= a + n for a, n in self._ranges.items())


class _PeerHandler(socketserver.BaseRequestHandler):
    """One incoming batch: check every run, then copy the bytes into place."""

    def handle(self):
        msg = _recv(self.request)
        runs = msg["runs"]
        data = _recv_exact(self.request, sum(n for _, n in runs))
        if not all(self.server.regions.contains(addr, n) for addr, n in runs):
            _send(self.request, {"code": INVALID_PARAM})
            return
        offset = 0
        for addr, n in runs:
            ctypes.memmove(addr, data[offset : offset + n], n)
            offset += n
        _send(self.request, {"code": OK})


class _PeerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, regions: _Regions):
        self.regions = regions
        super().__init__(("127.0.0.1", 0), _PeerHandler)


class TransferEngine:
    """memfabric's engine, in host memory over TCP (see the module docstring)."""

    TransDataOpType = TransDataOpType

    def __init__(self):
        self._regions = _Regions()
        self._server = _PeerServer(self._regions)
        self._store_url: str | None = None
        self._session: str | None = None

    def get_rpc_port(self) -> int:
        return self._server.server_address[1]

    def initialize(self, store_url, session_id, role, device_id, data_op_type=TransDataOpType.SDMA):
        if role not in ROLES or not isinstance(data_op_type, TransDataOpType) or device_id < 0:
            return INVALID_PARAM
        try:
            _request(store_url.removeprefix("tcp://"), {"op": "put", "session": session_id})
        except (OSError, ValueError):
            return NOT_CONNECTED
        self._store_url, self._session = store_url, session_id
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return OK

    def batch_register_memory(self, buffer_addrs, capacities) -> int:
        if len(buffer_addrs) != len(capacities) or any(n <= 0 for n in capacities):
            return INVALID_PARAM
        for addr, n in zip(buffer_addrs, capacities, strict=True):
            self._regions.add(addr, n)
        return OK

    def register_memory(self, buffer_addr, capacity) -> int:
        return self.batch_register_memory([buffer_addr], [capacity])

    def unregister_memory(self, buffer_addr) -> int:
        self._regions.remove(buffer_addr)
        return OK

    def batch_transfer_sync_write(self, dest_session, buffers, peer_buffers, lengths) -> int:
        if self._session is None:
            return NOT_INIT
        if not len(buffers) == len(peer_buffers) == len(lengths):
            return INVALID_PARAM
        if not all(self._regions.contains(a, n) for a, n in zip(buffers, lengths, strict=True)):
            return INVALID_PARAM
        try:
            store = self._store_url.removeprefix("tcp://")
            if not _request(store, {"op": "has", "session": dest_session})["known"]:
                return NOT_EXIST
            payload = b"".join(
                ctypes.string_at(a, n) for a, n in zip(buffers, lengths, strict=True)
            )
            runs = [[addr, n] for addr, n in zip(peer_buffers, lengths, strict=True)]
            with socket.create_connection(_host_port(dest_session), timeout=TIMEOUT_S) as sock:
                _send(sock, {"runs": runs}, payload)
                return _recv(sock)["code"]
        except (OSError, ConnectionError, ValueError):
            return NOT_CONNECTED

    def destroy(self) -> None:
        if self._session is not None:
            store = self._store_url.removeprefix("tcp://")
            with contextlib.suppress(OSError):  # the store's process may have gone first
                _request(store, {"op": "drop", "session": self._session})
            self._server.shutdown()
            self._session = None
        self._server.server_close()

    def unInitialize(self) -> None:
        self.destroy()


def make_module(name: str = "mf_adapter") -> types.ModuleType:
    module = types.ModuleType(name, __doc__)
    module.TransferEngine = TransferEngine
    module.create_config_store = create_config_store
    module.set_log_level = set_log_level
    return module


def install() -> types.ModuleType:
    """Make ``import mf_adapter`` return the loopback module in this process.

    The fake NPU host keeps the KV pool in host memory, which pdcore reports as
    DRAM; the ascend engine is told to accept it (the one deviation, as the
    platform's device placement is on the torch_npu side).
    """
    from pdcore_transfer_ascend.engine import AscendTransferEngine

    module = make_module()
    sys.modules["mf_adapter"] = module
    AscendTransferEngine.memory_kinds = (MemoryKind.NPU, MemoryKind.DRAM)
    return module


def loopback_engine(config):
    """The ascend engine over this loopback binding, accepting host memory (the
    conformance kit's ``factory_path``). Nothing global changes: the binding is
    in ``sys.modules`` only while the engine is built, and the DRAM allowance is
    a subclass's, so tests of the real engine in the same process are unaffected.
    """
    from unittest import mock

    from pdcore_transfer_ascend.engine import AscendTransferEngine

    class LoopbackAscendEngine(AscendTransferEngine):
        memory_kinds = (MemoryKind.NPU, MemoryKind.DRAM)

    with mock.patch.dict(sys.modules, {"mf_adapter": make_module()}):
        return LoopbackAscendEngine(config)
