"""Tensor parallelism through real servers: TP=2 (two gloo ranks) equals TP=1.

The same tiny random Qwen3 checkpoint (4 query heads, 2 KV heads: one per rank)
serves the 16 e2e prompts greedily at --tp-size 1 and 2, and through a
two-"node" launch (--nnodes 2: node 0 serves HTTP with rank 0, node 1 runs
rank 1, meeting at --dist-init-addr on 127.0.0.1, with a shared secret). Nodes
with different secrets must refuse to start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from e2e.pd_helpers import COMMON, assert_same_greedy, gen_body
from e2e.server_process import ServerProcess, free_port

pytestmark = pytest.mark.timeout(600)


async def _post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(body):
            r = await client.post(f"{url}/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def _outputs(server: ServerProcess, prompts) -> list[dict]:
    try:
        return asyncio.run(_post_all(server.url, [gen_body(p) for p in prompts]))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tp1_outputs(qwen3_path, prompts) -> list[dict]:
    return _outputs(ServerProcess("--model-path", qwen3_path, *COMMON), prompts)


def test_tp2_greedy_equals_tp1(qwen3_path, prompts, tp1_outputs):
    server = ServerProcess("--model-path", qwen3_path, "--tp-size", "2", *COMMON)
    info = httpx.get(f"{server.url}/get_server_info", timeout=10).json()
    engine = info["engine_info"]
    assert engine["tp_size"] == 2, f"engine reports tp_size {engine.get('tp_size')}"
    assert engine["kv_heads_per_rank"] == 1, "each rank must hold one of the 2 KV heads"
    outs = _outputs(server, prompts)
    for i, (out, ref) in enumerate(zip(outs, tp1_outputs, strict=True)):
        assert_same_greedy(out, ref, f"prompt {i} at TP=2")


def test_two_node_launch_equals_tp1(qwen3_path, prompts, tp1_outputs):
    """Node 1 runs rank 1 without HTTP; node 0's server answers for both. Both nodes
    share a --disaggregation-secret, so every step plan travels sealed."""
    addr = f"127.0.0.1:{free_port()}"
    dist = ("--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr,
            "--disaggregation-secret", "two-node-secret")  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "pdcore.launch_server", "--model-path", qwen3_path,
         *dist, "--node-rank", "1", *COMMON, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        server = ServerProcess("--model-path", qwen3_path, *dist, "--node-rank", "0", *COMMON)
        outs = _outputs(server, prompts[:6])
        # Node 0 stopping tells node 1's rank to stop: node 1 exits by itself.
        assert node1.wait(timeout=60) == 0, node1.stderr.read()[-2000:]
    finally:
        if node1.poll() is None:
            node1.kill()
    for i, (out, ref) in enumerate(zip(outs, tp1_outputs[:6], strict=True)):
        assert_same_greedy(out, ref, f"prompt {i} on two nodes")


def test_two_nodes_with_different_secrets_refuse_to_start(qwen3_path):
    """A node that does not hold node 0's --disaggregation-secret cannot join: both
    nodes stop at startup, saying which flag to fix, instead of serving or hanging."""
    addr = f"127.0.0.1:{free_port()}"
    dist = ("--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "pdcore.launch_server", "--model-path", qwen3_path, *dist,
         "--node-rank", "1", "--disaggregation-secret", "not-the-same", *COMMON,
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    server = ServerProcess(
        "--model-path", qwen3_path, *dist, "--node-rank", "0", *COMMON,
        "--disaggregation-secret", "node-0-secret", wait=False,
    )  # fmt: skip
    try:
        with pytest.raises(RuntimeError, match="server exited") as failed:
            server.wait_healthy(timeout=180)
        assert "--disaggregation-secret" in str(failed.value), (
            f"node 0 must say which flag to fix: {str(failed.value)[-1500:]}"
        )
        assert node1.wait(timeout=120) != 0, "node 1 must fail too, not serve or hang"
        err = node1.stderr.read()
        assert "--disaggregation-secret" in err, f"node 1 must name the flag: {err[-1500:]}"
    finally:
        server.stop()
        if node1.poll() is None:
            node1.kill()
