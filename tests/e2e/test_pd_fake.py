"""The fake transfer path: PD servers warm up and health-check alone, without a peer.

SGLang's contract: a request whose ``bootstrap_host`` is 2.2.2.2 skips the
bootstrap and the transfer; ``--disaggregation-transfer-backend fake`` makes
every request do so. Neither is ever the default.
"""

from __future__ import annotations

from e2e.pd_helpers import COMMON, assert_idle, room, start_decode
from e2e.server_process import ServerProcess, free_port

from pdcore.config import ServerArgs
from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST


def fake_body(ids, max_new: int = 4) -> dict:
    return {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True},
        "bootstrap_host": FAKE_BOOTSTRAP_HOST,
        "bootstrap_port": 1,
        "bootstrap_room": room(),
    }


def test_fake_is_not_the_default_backend():
    assert ServerArgs().disaggregation_transfer_backend == "mooncake"


def test_lone_prefill_and_decode_servers_generate_on_the_fake_path(qwen3_path):
    """No peer anywhere: /health_generate and fake-host requests run each engine alone."""
    prefill = ServerProcess(
        "--model-path",
        qwen3_path,
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-bootstrap-port",
        str(free_port()),
        *COMMON,
        wait=False,
    )
    try:
        decode = start_decode(qwen3_path, "nixl", wait=False)
        try:
            prefill.wait_healthy()
            decode.wait_healthy()
            for server in (prefill, decode):
                r = server.get("/health_generate")
                assert r.status_code == 200, (server.url, r.text)
            r = prefill.post("/generate", json=fake_body(list(range(5, 90))))
            assert r.status_code == 200, r.text
            assert len(r.json()["output_ids"]) == 1, "prefill generates only the first token"
            r = decode.post("/generate", json=fake_body(list(range(5, 90)), max_new=5))
            assert r.status_code == 200, r.text
            assert len(r.json()["output_ids"]) == 5
            for server in (prefill, decode):
                stats = server.get("/get_server_info").json()["disaggregation"]
                assert stats["rooms_succeeded"] == 0, "a fake room is not a transfer"
            assert_idle(prefill, decode)
        finally:
            decode.stop()
    finally:
        prefill.stop()


def test_fake_backend_decode_server_generates_without_prefill(qwen3_path):
    decode = ServerProcess(
        "--model-path",
        qwen3_path,
        "--disaggregation-mode",
        "decode",
        "--disaggregation-transfer-backend",
        "fake",
        *COMMON,
    )
    try:
        body = fake_body(list(range(5, 40)), max_new=6)
        body["bootstrap_host"] = "127.0.0.1"  # ignored: the whole server is fake
        r = decode.post("/generate", json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["output_ids"]) == 6
        info = decode.get("/get_server_info").json()
        assert info["disaggregation"]["transfer_backend"] == "fake"
        assert decode.kv_pages()["used_pages"] == 0
    finally:
        decode.stop()
