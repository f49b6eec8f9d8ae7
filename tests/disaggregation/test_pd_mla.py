"""PD over an MLA KV pool (one latent tensor per layer), through real transfer engines.

A spawned prefill with an MLA pool pushes chunks into this process's MLA pool
over Mooncake (TCP) and NIXL (UCX); every page's latent and rope-key bytes land.
A decode whose pool is MHA (K and V per layer) is refused at the handshake, and
the error says the layouts differ.
"""

from __future__ import annotations

import random

import pytest
from disaggregation.pd_peer import ENV, MODEL, PrefillProcess, make_pool, wait_state

from pdcore.disaggregation.kv_args import KVArgs, KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import HandshakeError
from pdcore.envs import DisaggregationEnv

# 2 layers of [latent 16 | rope 8] per token vs an MHA pool of 2 x (3 heads x 8).
MLA_SHAPE = dict(
    num_layers=2, num_kv_heads=1, head_dim=24, page_size=4, dtype="float32", latent_rank=16
)
MHA_SHAPE = dict(num_layers=2, num_kv_heads=3, head_dim=8, page_size=4, dtype="float32")
CHUNKS = [[3, 4, 5], [9, 10], [6, 12, 13]]
AUX = dict(token_id=77, logprob=-0.5, top_ids=[77], top_logprobs=[-0.5])


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def prefill(backend):
    proc = PrefillProcess(backend, shape=MLA_SHAPE)
    yield proc
    proc.close()


def decode_manager(backend, shape):
    pool = make_pool(shape)
    mgr = KVManager("decode", KVArgs.from_pool(pool, MODEL), backend, env=DisaggregationEnv(**ENV))
    return mgr, pool


def test_latent_pages_land_in_scattered_pages(backend, prefill):
    mgr, pool = decode_manager(backend, MLA_SHAPE)
    try:
        assert len(pool.buffers()) == 2 and mgr.args.layout.is_mla
        room = random.getrandbits(63) or 1
        recv = mgr.receiver(room, prefill.addr)
        assert wait_state(recv, 10, (KVPoll.WAITING_FOR_INPUT, KVPoll.FAILED)) is (
            KVPoll.WAITING_FOR_INPUT
        ), recv.failure_reason
        dst = random.sample(range(1, 32), 8)
        recv.send_request(dst, 3)
        result = prefill.call("send", room, CHUNKS, AUX, False, 5)
        assert result["state"] == "SUCCESS", result["reason"]
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
        views = [t for pair in pool.layer_caches for t in pair]  # latent, rope key per layer
        src = [p for c in CHUNKS for p in c]
        for s, d in zip(src, dst, strict=True):
            got = [t[d].numpy().tobytes() for t in views]
            assert got == result["expected"][s], f"page {s}->{d}"
        assert recv.aux().token_id == AUX["token_id"]
        assert mgr.active_rooms == 0
    finally:
        mgr.close()


def test_mha_decode_is_refused_by_an_mla_prefill(backend, prefill):
    mgr, _ = decode_manager(backend, MHA_SHAPE)
    try:
        recv = mgr.receiver(random.getrandbits(63) or 1, prefill.addr)
        assert wait_state(recv, 10) is KVPoll.FAILED
        reason = recv.failure_reason
        assert "incompatible" in reason and "is_mla: prefill=True decode=False" in reason, reason
        with pytest.raises(HandshakeError, match="is_mla: prefill=True decode=False"):
            mgr.client.handshake(prefill.addr)
        assert mgr.active_rooms == 0
    finally:
        mgr.close()
