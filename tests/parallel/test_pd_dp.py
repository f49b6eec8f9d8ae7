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

import asyncio

import pytest
from e2e.pd_helpers import (
    assert_idle,
    assert_same_greedy,
    gen_body,
    pd_generate,
    pd_servers,
)

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
    pd = {"bootstrap_host": "127.0.0.1", "bootstrap_port": port}
    dp_side = prefill if prefill_args else decode
    try:
        assert dp_side.post("/flush_cache").status_code == 200  # drop the warm-up's pages
        # Consecutive rooms alternate DP ranks (room % 2) on the DP side.
        bodies = [gen_body(p, bootstrap_room=1000 + i, **pd) for i, p in enumerate(prompts[:N])]
        results = asyncio.run(pd_generate(prefill, decode, bodies))
        for i, ((p_status, d_status, out), ref) in enumerate(
            zip(results, null_outputs[:N], strict=True)
        ):
            assert (p_status, d_status) == (200, 200), f"prompt {i}: {out}"
            assert_same_greedy(out, ref, f"{shape}, prompt {i}")
        assert_idle(prefill, decode)
        ranks = dp_side.get("/get_server_info").json()["data_parallel"]
        cached = [r["kv_cache"]["cached_pages"] for r in ranks]
        assert all(c > 0 for c in cached), f"rooms must reach both DP ranks: {cached}"
    finally:
        prefill.stop()
        decode.stop()
