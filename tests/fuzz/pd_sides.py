"""A prefill (bootstrap server + KV manager) and a decode KV manager in this process.

Both use the Mooncake engine over TCP on 127.0.0.1 and the PD protocol tests'
pool shape. ``post`` sends raw bytes to a control endpoint and returns the HTTP
status and the decoded reply (opened first when sealed); ``handler_errors``
counts the control handlers that raised (the server answers those with an
``ErrorReply`` too, so only its log tells a bug from a refusal).
"""

from __future__ import annotations

import http.client
import logging
import socket

from disaggregation.pd_peer import ENV, MODEL, SHAPE, make_pool

from pdcore.disaggregation.auth import is_sealed, nonce_of, open_reply, to_key
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.control import PATH
from pdcore.disaggregation.kv_args import KVArgs
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import decode
from pdcore.envs import DisaggregationEnv

# Pending requests and abort marks for rooms that never come expire after 1 s.
FUZZ_ENV = DisaggregationEnv(**{**ENV, "bootstrap_timeout": 1.0, "heartbeat_interval": 60.0})
REPLY_TIMEOUT_S = 10.0


class HandlerErrors(logging.Handler):
    """Counts ``control handler failed`` records (a handler raised)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.getMessage().startswith("control handler failed"):
            self.records.append(record)


class PDSides:
    def __init__(self, secret: str | None = None, env: DisaggregationEnv = FUZZ_ENV):
        self.secret = secret
        self.key = to_key(secret)
        self.errors = HandlerErrors()
        logging.getLogger("pdcore.disaggregation.control").addHandler(self.errors)
        self.prefill_pool, self.decode_pool = make_pool(SHAPE), make_pool(SHAPE)
        self.bootstrap = BootstrapServer("127.0.0.1", 0, secret)
        self.addr = f"127.0.0.1:{self.bootstrap.port}"
        self.prefill = KVManager(
            "prefill",
            KVArgs.from_pool(self.prefill_pool, MODEL),
            "mooncake",
            env=env,
            bootstrap=self.bootstrap,
            secret=secret,
        )
        self.decode = KVManager(
            "decode",
            KVArgs.from_pool(self.decode_pool, MODEL),
            "mooncake",
            env=env,
            secret=secret,
        )
        self.notice_addr = self.decode.info.notify_addr
        self.decode.client.handshake(self.addr)  # decode is a known peer of prefill

    @property
    def decode_id(self) -> str:
        return self.decode.instance_id

    def close(self) -> None:
        self.decode.close()
        self.prefill.close()
        self.bootstrap.close()
        logging.getLogger("pdcore.disaggregation.control").removeHandler(self.errors)


def count_handled(control_server) -> list:
    """Wrap a ``ControlServer``'s handler; the list gets every message that reached it."""
    seen, handle = [], control_server._on_message

    def counting(msg):
        seen.append(msg)
        return handle(msg)

    control_server._on_message = counting
    return seen


def post(addr: str, body: bytes, key: bytes | None = None, path: str = PATH, headers=None):
    """``(status, reply)``: the reply decoded (``None`` if not msgpack, e.g. a 404);
    a sealed reply is opened as the answer to ``body``."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=REPLY_TIMEOUT_S)
    try:
        conn.request("POST", path, body, headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.getheader("Content-Type") != "application/msgpack":
        return resp.status, None
    if key is not None and is_sealed(data):
        data = open_reply(key, data, nonce_of(body))
    return resp.status, decode(data)


def send_raw(addr: str, raw: bytes, timeout: float = REPLY_TIMEOUT_S) -> bytes:
    """Write ``raw`` (a whole hand-made HTTP request) and read until the server closes."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
