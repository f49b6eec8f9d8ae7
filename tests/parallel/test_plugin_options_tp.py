"""A plugin's flag reaches its transfer engine in every engine process (real server).

A decode server at --tp-size 2 (two gloo ranks) with the example plugin's
``example-tcp`` engine and ``--example-tcp-timeout 7.5``: the leader builds the
engine of its KV manager, rank 1 the engine its own KV pool is registered with.
Each engine logs the timeout it was built with, so both ranks must say 7.5 s (the
plugin's default is 10 s).
"""

from __future__ import annotations

import re
import time

import pytest
from e2e.pd_helpers import COMMON
from e2e.server_process import ServerProcess

pytestmark = pytest.mark.timeout(600)

ENGINE_LINE = re.compile(r"engine\[tp(\d)\].*example-tcp decode engine on port \d+, timeout (\S+)s")


def engine_timeouts(server: ServerProcess, ranks: int, wait: float = 30.0) -> dict[int, str]:
    """Rank -> the timeout its example-tcp engine logged (waits for every rank's line)."""
    deadline = time.monotonic() + wait
    while True:
        found = {int(r): t for r, t in ENGINE_LINE.findall(server.launched.output())}
        if len(found) >= ranks or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_plugin_flag_reaches_the_transfer_engine_of_every_tp_rank(example_plugin_site, qwen3_path):
    server = ServerProcess(
        "--model-path",
        qwen3_path,
        "--tp-size",
        "2",
        "--disaggregation-mode",
        "decode",
        "--disaggregation-transfer-backend",
        "example-tcp",
        "--example-tcp-timeout",
        "7.5",
        *COMMON,
        "--log-level",
        "info",
    )
    try:
        timeouts = engine_timeouts(server, ranks=2)
    finally:
        server.stop()
    assert timeouts == {0: "7.5", 1: "7.5"}, (
        "--example-tcp-timeout must reach the example-tcp engine in the leader and in "
        f"TP rank 1 (not the plugin's 10 s default); engines logged {timeouts}:\n"
        f"{server.log_tail(3000)}"
    )
