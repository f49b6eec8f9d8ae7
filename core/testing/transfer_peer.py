"""The remote side of the transfer conformance suite, run in a spawned process.

It builds an engine of the backend under test, registers a zeroed buffer, and
answers commands over a pipe so the test process can check what landed there.
"""

from __future__ import annotations

import importlib
import time

import numpy as np

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig, TransferEngine


def build_engine(backend_name: str, factory_path: str | None, options: dict, role: str):
    """The backend's engine: from ``module:attr`` if given, else from the registry."""
    config = TransferConfig(role=role, options=dict(options))
    if factory_path:
        module, _, attr = factory_path.partition(":")
        return getattr(importlib.import_module(module), attr)(config)
    from pdcore.registry import Registry

    return Registry.discover().get("transfer", backend_name).factory(config)


def peer_main(conn, backend_name, factory_path, options, region_bytes):
    engine: TransferEngine = build_engine(backend_name, factory_path, options, "decode")
    buf = np.zeros(region_bytes, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    conn.send(engine.metadata())
    while True:
        cmd, *arg = conn.recv()
        if cmd == "connect":
            conn.send(engine.connect(arg[0]))
        elif cmd == "read":
            offset, length = arg
            conn.send(buf[offset : offset + length].tobytes())
        elif cmd == "notifications":
            deadline = time.monotonic() + arg[0]
            got = engine.notifications()
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
                got = engine.notifications()
            conn.send([payload for _, payload in got])
        elif cmd == "close":
            engine.close()
            conn.send("closed")
            return
