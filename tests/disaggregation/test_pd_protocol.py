"""PD protocol end to end: a spawned prefill pushes KV to this process playing decode.

Each backend gets one prefill process (module-scoped) and decode managers built
here; the fault tests start their own prefill when they kill it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time

import pytest
from disaggregation.pd_peer import ENV, MODEL, SHAPE, PrefillProcess, make_pool, wait_state

from pdcore.disaggregation.kv_args import KVArgs, KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import HandshakeError
from pdcore.disaggregation.transfer import MemoryRegion
from pdcore.envs import DisaggregationEnv

BACKENDS = ["mooncake", "nixl", "example-tcp"]
CHUNKS = [[3, 4, 5], [9, 10], [6, 12, 13]]  # 8 prefill pages in 3 chunks
AUX = dict(token_id=1234, logprob=-0.25, top_ids=[1234, 7, 8], top_logprobs=[-0.25, -2.0, -3.5])


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    if request.param == "example-tcp":
        request.getfixturevalue("example_plugin_site")
    return request.param


@pytest.fixture(scope="module")
def prefill(backend):
    proc = PrefillProcess(backend)
    yield proc
    proc.close()


def decode_manager(backend, shape=SHAPE, **env):
    pool = make_pool(shape)
    mgr = KVManager(
        "decode", KVArgs.from_pool(pool, MODEL), backend, env=DisaggregationEnv(**{**ENV, **env})
    )
    return mgr, pool


@pytest.fixture(scope="module")
def decode(backend, prefill):
    mgr, pool = decode_manager(backend)
    yield mgr, pool
    mgr.close()


def new_room() -> int:
    return random.getrandbits(63) or 1


def start_receiver(mgr, addr, n_pages=8, aux_slot=5):
    room = new_room()
    recv = mgr.receiver(room, addr)
    assert wait_state(recv, 10, (KVPoll.WAITING_FOR_INPUT, KVPoll.FAILED)) is (
        KVPoll.WAITING_FOR_INPUT
    ), recv.failure_reason
    dst = random.sample(range(1, 32), n_pages)
    recv.send_request(dst, aux_slot)
    return room, recv, dst


def test_chunks_and_aux_land_in_scattered_pages(prefill, decode):
    mgr, pool = decode
    room, recv, dst = start_receiver(mgr, prefill.addr)
    result = prefill.call("send", room, CHUNKS, AUX, False, 7)
    assert result["state"] == "SUCCESS", result["reason"]
    assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
    src = [p for c in CHUNKS for p in c]
    buffers = [t for kv in pool.layer_caches for t in kv]
    for s, d in zip(src, dst, strict=True):
        for i, t in enumerate(buffers):
            assert t[d].numpy().tobytes() == result["expected"][s][i], f"page {s}->{d} buffer {i}"
    got = recv.aux()
    assert (got.token_id, got.top_ids) == (AUX["token_id"], AUX["top_ids"])
    assert got.logprob == pytest.approx(AUX["logprob"])
    assert got.top_logprobs == pytest.approx(AUX["top_logprobs"])
    assert mgr.active_rooms == 0 and mgr.engine.inflight() == 0
    stats = prefill.call("stats")
    assert stats["active_rooms"] == 0 and stats["inflight_transfers"] == 0
    assert stats["bytes_transferred"] >= 8 * 2 * 2 * 4 * 2 * 8 * 4


def test_concurrent_rooms_each_get_their_own_pages(prefill, decode):
    mgr, pool = decode
    dst_all = random.sample(range(1, 32), 24)
    rooms, receivers, chunk_lists = [], [], []
    for i in range(4):
        room = new_room()
        recv = mgr.receiver(room, prefill.addr)
        assert wait_state(recv, 10, (KVPoll.WAITING_FOR_INPUT,)) is KVPoll.WAITING_FOR_INPUT
        recv.send_request(dst_all[6 * i : 6 * i + 6], 10 + i)
        src = list(range(1 + 6 * i, 7 + 6 * i))
        rooms.append(room)
        receivers.append(recv)
        chunk_lists.append([src[:2], src[2:4], src[4:]])
    result = prefill.call("send_many", rooms, chunk_lists, 11)
    assert all(st == "SUCCESS" for st, _ in result["results"].values()), result["results"]
    buffers = [t for kv in pool.layer_caches for t in kv]
    for i, (room, recv) in enumerate(zip(rooms, receivers, strict=True)):
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
        assert recv.aux().token_id == room % 1000
        src = [p for c in chunk_lists[i] for p in c]
        for s, d in zip(src, dst_all[6 * i : 6 * i + 6], strict=True):
            got = [t[d].numpy().tobytes() for t in buffers]
            assert got == result["expected"][s], f"room {i}: page {s}->{d}"
    assert mgr.active_rooms == 0 and result["active_rooms"] == 0


def test_decode_gone_fails_only_its_room(backend, prefill, decode):
    gone, _ = decode_manager(backend)
    room, _, _ = start_receiver(gone, prefill.addr)
    gone.close()  # its notice endpoint and engine are gone: prefill must not hang
    result = prefill.call("send", room, CHUNKS, AUX, False, 12)
    assert result["state"] == "FAILED", result
    assert prefill.call("stats")["active_rooms"] == 0
    mgr, _ = decode  # the prefill keeps serving other decodes
    room, recv, _ = start_receiver(mgr, prefill.addr)
    assert prefill.call("send", room, CHUNKS, AUX, False, 13)["state"] == "SUCCESS"
    assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason


def test_wrong_aux_room_fails(prefill, decode):
    mgr, _ = decode
    room, recv, _ = start_receiver(mgr, prefill.addr)
    prefill.call("send", room, CHUNKS, AUX, True, 8)
    assert wait_state(recv, 10) is KVPoll.FAILED
    assert f"expected {room}" in recv.failure_reason
    assert mgr.active_rooms == 0


def test_bootstrap_timeout_fails_prefill_room(prefill):
    start = time.monotonic()
    result = prefill.call("hold", new_room(), 10)
    assert result["state"] == "FAILED" and "BOOTSTRAP_TIMEOUT" in result["reason"]
    assert 1.5 < time.monotonic() - start < 6
    assert result["active_rooms"] == 0


def test_waiting_timeout_fails_decode_room_and_prefill_forgets(backend, prefill):
    mgr, _ = decode_manager(backend, waiting_timeout=2.0)
    try:
        start = time.monotonic()
        _, recv, _ = start_receiver(mgr, prefill.addr)
        assert wait_state(recv, 10) is KVPoll.FAILED
        assert "WAITING_TIMEOUT" in recv.failure_reason
        assert 1.5 < time.monotonic() - start < 6
        assert mgr.active_rooms == 0
        stats = prefill.call("stats")
        assert stats["pending_requests"] == 0 and stats["active_rooms"] == 0
    finally:
        mgr.close()


def test_abort_from_decode_fails_prefill_room(prefill, decode):
    mgr, _ = decode
    room, recv, _ = start_receiver(mgr, prefill.addr)
    prefill.post("hold", room, 10)
    time.sleep(0.5)  # the prefill room is READY now, waiting for chunks
    recv.abort("client went away")
    assert wait_state(recv, 10) is KVPoll.FAILED
    result = prefill.recv()
    assert result["state"] == "FAILED" and "client went away" in result["reason"]
    assert result["active_rooms"] == 0 and mgr.active_rooms == 0


def test_abort_from_prefill_fails_decode_room(prefill, decode):
    mgr, _ = decode
    room, recv, _ = start_receiver(mgr, prefill.addr)
    result = prefill.call("abort", room)
    assert result["state"] == "FAILED" and result["active_rooms"] == 0
    assert wait_state(recv, 10) is KVPoll.FAILED
    assert "prefill gave up" in recv.failure_reason and mgr.active_rooms == 0


@pytest.mark.parametrize(
    "field,override",
    [("page_size", {"page_size": 8}), ("kv_dtype", {"dtype": "float16"})],
)
def test_handshake_mismatch_names_fields(backend, prefill, field, override):
    mgr, _ = decode_manager(backend, shape={**SHAPE, **override})
    try:
        recv = mgr.receiver(new_room(), prefill.addr)
        assert wait_state(recv, 10) is KVPoll.FAILED
        assert field in recv.failure_reason and "prefill=" in recv.failure_reason
        with pytest.raises(HandshakeError, match=field):
            mgr.client.handshake(prefill.addr)
        assert mgr.active_rooms == 0
    finally:
        mgr.close()


def test_killed_prefill_fails_pending_room_within_heartbeat_window(backend):
    proc = PrefillProcess(backend)
    mgr, _ = decode_manager(backend)
    try:
        room, recv, _ = start_receiver(mgr, proc.addr)
        deadline = time.monotonic() + 5
        while proc.call("stats")["pending_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the request reached prefill: only heartbeats can fail it now
        proc.kill()
        start = time.monotonic()
        assert wait_state(recv, 10) is KVPoll.FAILED
        window = ENV["heartbeat_interval"] * ENV["heartbeat_max_failure"]
        # Slack for a loaded 2-core CI machine; still far below the 30 s waiting
        # timeout, so the failure can only have come from the heartbeats.
        assert time.monotonic() - start < window + 5.0, recv.failure_reason
        # Heartbeats mark the peer offline; if the kill lands while decode's transfer
        # request still waits for its reply, that request fails first: both are right.
        reason = recv.failure_reason
        assert "offline" in reason or "unreachable" in reason, reason
        assert mgr.active_rooms == 0
        proc.close()
        proc = PrefillProcess(backend, port=proc.port)  # the same prefill address comes back
        room, recv, _ = start_receiver(mgr, proc.addr)
        assert proc.call("send", room, CHUNKS, AUX, False, 9)["state"] == "SUCCESS"
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
    finally:
        mgr.close()
        proc.close()


def test_restarted_prefill_is_handshaken_again_before_heartbeats_notice(caplog):
    caplog.set_level(logging.INFO, "pdcore.disaggregation")
    backend = "mooncake"
    proc = PrefillProcess(backend)
    mgr, _ = decode_manager(backend, heartbeat_interval=60.0)  # no heartbeat in this test
    try:
        room, recv, _ = start_receiver(mgr, proc.addr)
        assert proc.call("send", room, CHUNKS, AUX, False, 21)["state"] == "SUCCESS"
        assert wait_state(recv, 10) is KVPoll.SUCCESS
        proc.kill()
        proc = PrefillProcess(backend, port=proc.port)
        room, recv, _ = start_receiver(mgr, proc.addr)  # cached handshake is stale now
        assert proc.call("send", room, CHUNKS, AUX, False, 22)["state"] == "SUCCESS"
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
        assert "handshaking again" in caplog.text
        assert mgr.active_rooms == 0
    finally:
        mgr.close()
        proc.close()


def test_aux_row_can_ride_in_the_last_notice():
    """Engines that cannot write host memory (cuda_ipc) send the aux row in the
    notice; the first token and logprobs arrive all the same."""
    options = {"aux_in_notice": True}
    proc = PrefillProcess("mooncake", options=options)
    pool = make_pool(SHAPE)
    mgr = KVManager(
        "decode",
        KVArgs.from_pool(pool, MODEL),
        "mooncake",
        env=DisaggregationEnv(**ENV),
        engine_options=options,
    )
    try:
        assert mgr.aux_inline
        aux_buffer = MemoryRegion(mgr.aux.addr, mgr.aux.nbytes)
        assert aux_buffer not in mgr.engine.regions, "aux buffer registered with the engine"
        room, recv, _ = start_receiver(mgr, proc.addr)
        result = proc.call("send", room, CHUNKS, AUX, False, 7)
        assert result["state"] == "SUCCESS", result["reason"]
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
        got = recv.aux()
        assert (got.token_id, got.logprob, got.top_ids) == (
            AUX["token_id"],
            AUX["logprob"],
            AUX["top_ids"],
        )
    finally:
        mgr.close()
        proc.close()


def test_handshake_refuses_a_decode_claiming_heads_the_model_lacks(backend, prefill):
    """Prefill writes each decode rank its heads: a claimed range outside the model's
    KV heads is refused at the handshake, before any page moves."""
    pool = make_pool(SHAPE)
    args = KVArgs.from_pool(pool, MODEL, tp_size=2, total_kv_heads=2, kv_heads_first=1)
    args = dataclasses.replace(args, kv_heads_count=2)  # heads [1, 3) of 2
    mgr = KVManager("decode", args, backend, env=DisaggregationEnv(**ENV))
    try:
        with pytest.raises(HandshakeError, match=r"claims KV heads \[1, 3\) of a model with 2"):
            mgr.client.handshake(prefill.addr)
    finally:
        mgr.close()
