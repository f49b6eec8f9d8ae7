"""DP attention through a real server: ``--tp-size 2 --dp-size 2 --enable-dp-attention``.

Two DP groups of one rank each, every group with its own engine, scheduler
and KV pool, the MLP split over both ranks. The front end routes requests
round robin or to the pinned ``data_parallel_rank``, sums the engines' stats
and shows them per rank in ``/get_server_info``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from e2e.pd_helpers import COMMON, assert_same_greedy, gen_body
from e2e.server_process import ServerProcess, free_port_run

pytestmark = pytest.mark.timeout(300)
N = 8
DP = ("--tp-size", "2", "--dp-size", "2", "--enable-dp-attention")


async def _post_all(url: str, bodies: list[dict], path: str = "/generate") -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(body):
            r = await client.post(f"{url}{path}", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def _assert_matches(out: dict, ref: dict, what: str) -> None:
    assert_same_greedy(out, ref, what)
    got = [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]]
    want = [lp for lp, _, _ in ref["meta_info"]["output_token_logprobs"]]
    if out["output_ids"] == ref["output_ids"]:
        worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
        assert worst < 1e-4, f"{what}: logprobs differ by {worst:.2e}"


def _ranks(server: ServerProcess) -> list[dict]:
    return server.get("/get_server_info").json()["data_parallel"]


@pytest.fixture(scope="module")
def tp1_outputs(qwen3_path, prompts) -> list[dict]:
    server = ServerProcess("--model-path", qwen3_path, *COMMON)
    try:
        return asyncio.run(_post_all(server.url, [gen_body(p) for p in prompts[:N]]))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dp_server(qwen3_path):
    server = ServerProcess("--model-path", qwen3_path, *DP, *COMMON)
    yield server
    assert server.stop() == 0, "the DP server must stop cleanly on SIGTERM"


def test_concurrent_requests_equal_tp1_and_use_both_ranks(dp_server, prompts, tp1_outputs):
    engine = dp_server.get("/get_server_info").json()["engine_info"]
    assert (engine["tp_size"], engine["dp_size"], engine["attn_tp_size"]) == (2, 2, 1)
    assert dp_server.get("/flush_cache").status_code == 200
    outs = asyncio.run(_post_all(dp_server.url, [gen_body(p) for p in prompts[:N]]))
    for i, (out, ref) in enumerate(zip(outs, tp1_outputs, strict=True)):
        _assert_matches(out, ref, f"prompt {i} under DP attention")
    ranks = _ranks(dp_server)
    assert [r["dp_rank"] for r in ranks] == [0, 1]
    assert all(r["kv_cache"]["cached_pages"] > 0 for r in ranks), f"one rank idle: {ranks}"
    info = dp_server.get("/get_server_info").json()
    total = sum(r["kv_cache"]["total_pages"] for r in ranks)
    assert info["kv_cache"]["total_pages"] == total, "server stats must sum the ranks"
    metrics = dp_server.get("/metrics").text
    assert "sglang:num_running_reqs" in metrics and dp_server.get("/health").status_code == 200


@pytest.mark.parametrize("rank", [1, 0])
def test_pinned_request_runs_alone_on_its_rank(dp_server, prompts, tp1_outputs, rank):
    """The other rank idles through every forward (zero tokens of its own)."""
    assert dp_server.post("/flush_cache").status_code == 200
    out = dp_server.post("/generate", gen_body(prompts[0], data_parallel_rank=rank))
    assert out.status_code == 200, out.text
    _assert_matches(out.json(), tp1_outputs[0], f"prompt 0 pinned to DP rank {rank}")
    cached = [r["kv_cache"]["cached_pages"] for r in _ranks(dp_server)]
    assert cached[rank] > 0 and cached[1 - rank] == 0, cached


def test_openai_extra_body_pins_the_rank(dp_server):
    assert dp_server.post("/flush_cache").status_code == 200
    body = {"prompt": list(range(3, 40)), "max_tokens": 3, "data_parallel_rank": 1}
    r = dp_server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    cached = [r["kv_cache"]["cached_pages"] for r in _ranks(dp_server)]
    assert cached[0] == 0 and cached[1] > 0, cached


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_out_of_range_rank_is_a_400_naming_the_field(dp_server, prompts, path):
    body = (
        gen_body(prompts[0], data_parallel_rank=2)
        if path == "/generate"
        else {"prompt": [5, 9, 11], "max_tokens": 2, "data_parallel_rank": -1}
    )
    r = dp_server.post(path, body)
    assert r.status_code == 400 and "data_parallel_rank" in r.text, r.text


def test_dp_attention_over_two_nodes_equals_tp1(qwen3_path, prompts, tp1_outputs):
    """DP rank 1's leader runs on "node 1" (no HTTP): it reaches node 0's front end
    over TCP at --dist-init-addr's PORT+2 / PORT+3, and both ranks serve requests.
    The nodes share a --disaggregation-secret: the DP leaders' messages travel sealed."""
    addr = f"127.0.0.1:{free_port_run(4)}"
    dist = (*DP, "--nnodes", "2", "--dist-init-addr", addr, "--disaggregation-secret", "dp-nodes")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "pdcore.launch_server", "--model-path", qwen3_path,
         *dist, "--node-rank", "1", *COMMON, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        server = ServerProcess("--model-path", qwen3_path, *dist, "--node-rank", "0", *COMMON)
        try:
            outs = asyncio.run(_post_all(server.url, [gen_body(p) for p in prompts[:N]]))
            ranks = _ranks(server)
            pinned = server.post("/generate", gen_body(prompts[0], data_parallel_rank=1))
        finally:
            server.stop()
        # Node 0 stopping tells node 1's ranks to stop: node 1 exits by itself.
        assert node1.wait(timeout=60) == 0, node1.stderr.read()[-2000:]
    finally:
        if node1.poll() is None:
            node1.kill()
    for i, (out, ref) in enumerate(zip(outs, tp1_outputs, strict=True)):
        _assert_matches(out, ref, f"prompt {i} with DP rank 1 on node 1")
    assert [r["dp_rank"] for r in ranks] == [0, 1]
    assert all(r["kv_cache"]["cached_pages"] > 0 for r in ranks), f"one rank idle: {ranks}"
    assert pinned.status_code == 200, pinned.text
    _assert_matches(pinned.json(), tp1_outputs[0], "prompt 0 pinned to node 1's DP rank")
