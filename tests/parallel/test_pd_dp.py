"""PD with DP attention on one side (real servers over Mooncake, gloo ranks).

Prefill TP=4 in two DP groups -> decode TP=2: both prefill DP leaders accept
decode's one handshake at the single bootstrap port, each room's transfer
request reaches the DP rank that prefilled it (``room % 2``), and each prefill
group gathers its two ranks' KV heads and stages one head per decode rank.
Prefill DP=1 -> decode DP=2: each decode DP leader handshakes on its own. Both
must equal null mode token for token, spread the rooms over both DP ranks and
hold no page after. (Prefill DP=2 with one rank per group -> decode DP=1 takes
the same bootstrap path as the first shape; it is left out to keep CI short.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from e2e.pd_helpers import (
    COMMON,
    assert_idle,
    assert_pd_equals,
    gen_body,
    pd_servers,
    start_decode,
)
from e2e.server_process import ServerProcess, free_port, free_port_run

pytestmark = pytest.mark.timeout(300)

DP = ("--tp-size", "2", "--dp-size", "2", "--enable-dp-attention")
DP_A2 = ("--tp-size", "4", "--dp-size", "2", "--enable-dp-attention")  # 2 ranks per group
SHAPES = {
    "P dp1 -> D dp2": ((), DP),
    "P tp4 dp2 -> D tp2": (DP_A2, ("--tp-size", "2")),
}
N = 6


@pytest.mark.parametrize("shape", SHAPES)
def test_dp_attention_pd_equals_null_mode(qwen3_path, prompts, null_outputs, shape):
    prefill_args, decode_args = SHAPES[shape]
    prefill, decode, port = pd_servers(
        qwen3_path, "mooncake", prefill_args=prefill_args, decode_args=decode_args
    )
    try:
        _check_pd(prefill, decode, port, prefill if prefill_args else decode, prompts, null_outputs)
    finally:
        prefill.stop()
        decode.stop()


def test_prefill_dp_over_two_nodes_equals_null_mode(qwen3_path, prompts, null_outputs):
    """The seed's multi-node PD shape in small: prefill DP=2 over two "nodes" (DP rank
    1's leader on node 1, reached by decode through node 0's bootstrap port, writing
    KV from node 1) -> decode DP=1."""
    nodes = (*DP, "--nnodes", "2", "--dist-init-addr", f"127.0.0.1:{free_port_run(4)}")
    port = free_port()
    args = (
        "--model-path", qwen3_path, "--disaggregation-mode", "prefill",
        "--disaggregation-bootstrap-port", str(port),
        "--disaggregation-transfer-backend", "mooncake", *COMMON, *nodes,
    )  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "pdcore.launch_server", *args, "--node-rank", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    prefill = decode = None
    try:
        prefill = ServerProcess(*args, "--node-rank", "0", wait=False)
        decode = start_decode(qwen3_path, "mooncake", wait=False)
        prefill.wait_healthy()
        decode.wait_healthy()
        _check_pd(prefill, decode, port, prefill, prompts, null_outputs)
    finally:
        for server in (decode, prefill):
            if server is not None:
                server.stop()
        try:
            assert node1.wait(timeout=60) == 0, node1.stderr.read()[-2000:]
        finally:
            if node1.poll() is None:
                node1.kill()


def _check_pd(prefill, decode, port, dp_side, prompts, null_outputs) -> None:
    """N rooms through the pair equal null mode, reach both DP ranks, hold no page."""
    pd = {"bootstrap_host": "127.0.0.1", "bootstrap_port": port}
    assert dp_side.post("/flush_cache").status_code == 200  # drop the warm-up's pages
    # Consecutive rooms alternate DP ranks (room % 2) on the DP side.
    bodies = [gen_body(p, bootstrap_room=1000 + i, **pd) for i, p in enumerate(prompts[:N])]
    assert_pd_equals(prefill, decode, bodies, null_outputs[:N], "DP attention")
    assert_idle(prefill, decode)
    ranks = dp_side.get("/get_server_info").json()["data_parallel"]
    cached = [r["kv_cache"]["cached_pages"] for r in ranks]
    assert all(c > 0 for c in cached), f"rooms must reach both DP ranks: {cached}"
