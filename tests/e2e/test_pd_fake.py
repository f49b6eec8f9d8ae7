"""The fake transfer path: PD servers warm up and health-check alone, without a peer.

SGLang's contract: ``--disaggregation-transfer-backend fake`` makes every request
skip the bootstrap and the transfer, and there a client may name the fake
bootstrap host 2.2.2.2. Elsewhere only the server's own probes take the fake path
(an internal flag); a client's 2.2.2.2 is a 400. A fake room's pages, which decode
never received, never enter a prefix cache. Fake is never the default.
"""

from __future__ import annotations

import pytest
from e2e.pd_helpers import CHUNK, assert_idle, room, start_decode, wait_idle
from e2e.server_process import ServerProcess, free_port
from router.cluster import start_parallel

from pdcore.config import ServerArgs
from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST
from pdcore.server.startup_notes import FAKE_BACKEND_WARNING

# One-token pages: the probe's short prompt fills whole pages, so a probe that
# cached its pages would show in cached_pages.
TINY_PAGES = (
    "--chunked-prefill-size",
    str(CHUNK),
    "--max-total-tokens",
    "4096",
    "--page-size",
    "1",
)


def fake_body(ids, max_new: int = 4) -> dict:
    return {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True},
        "bootstrap_host": FAKE_BOOTSTRAP_HOST,
        "bootstrap_port": 1,
        "bootstrap_room": room(),
    }


@pytest.fixture(scope="module")
def lone_servers(qwen3_path):
    """A prefill and a decode server on a real backend, each without a peer (warm-up on)."""
    prefill, decode = start_parallel(
        lambda: ServerProcess(
            "--model-path",
            qwen3_path,
            "--disaggregation-mode",
            "prefill",
            "--disaggregation-bootstrap-port",
            str(free_port()),
            *TINY_PAGES,
        ),
        lambda: start_decode(qwen3_path, "nixl", *TINY_PAGES),
    )
    yield prefill, decode
    start_parallel(prefill.stop, decode.stop)


@pytest.fixture(scope="module")
def fake_decode(qwen3_path):
    """A decode server on the fake backend."""
    decode = start_decode(qwen3_path, "fake")
    yield decode
    decode.stop()


def test_fake_is_not_the_default_backend():
    assert ServerArgs().disaggregation_transfer_backend == "mooncake"


def test_lone_pd_servers_answer_health_generate(lone_servers):
    """The probe reaches the fake path through its internal flag, not the refused host."""
    for server in lone_servers:
        r = server.get("/health_generate")
        assert r.status_code == 200, (server.url, r.text, server.log_tail())


def test_warm_up_and_health_probes_leave_nothing_in_the_prefix_cache(lone_servers):
    for server in lone_servers:
        assert server.get("/health_generate").status_code == 200
    assert_idle(*lone_servers)
    for server in lone_servers:
        pages = server.kv_pages()
        assert pages["cached_pages"] == 0, (
            f"{server.url}: a probe's pages (on decode: never written) entered the "
            f"prefix cache: {pages}"
        )


def test_client_fake_host_is_refused_without_the_fake_backend(lone_servers):
    for server in lone_servers:
        r = server.post("/generate", json=fake_body(list(range(5, 90))))
        assert r.status_code == 400, (
            f"{server.url}: the fake host would serve unwritten pages: {r.status_code} {r.text}"
        )
        assert "2.2.2.2 is reserved" in r.json()["error"]["message"], r.text
    assert_idle(*lone_servers)
    for server in lone_servers:
        stats = server.get("/get_server_info").json()["disaggregation"]
        assert stats["rooms_succeeded"] == 0 and stats["rooms_failed"] == 0, stats


def test_fake_backend_decode_server_generates_without_prefill(fake_decode):
    body = fake_body(list(range(5, 40)), max_new=6)
    body["bootstrap_host"] = "127.0.0.1"  # ignored: the whole server is fake
    r = fake_decode.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["output_ids"]) == 6
    info = fake_decode.get("/get_server_info").json()
    assert info["disaggregation"]["transfer_backend"] == "fake"
    assert fake_decode.kv_pages()["used_pages"] == 0


def test_fake_backend_accepts_the_fake_host_and_caches_none_of_its_pages(fake_decode):
    r = fake_decode.post("/generate", json=fake_body(list(range(100, 180)), max_new=6))
    assert r.status_code == 200, f"SGLang's fake host stays usable on a fake server: {r.text}"
    assert len(r.json()["output_ids"]) == 6
    pages = wait_idle(fake_decode)  # the fake backend has no rooms to count
    assert pages["cached_pages"] == 0, f"unwritten pages entered the prefix cache: {pages}"
    assert pages["free_pages"] == pages["total_pages"], f"a page leaked: {pages}"


def test_fake_backend_warns_at_start_that_outputs_are_not_real(fake_decode):
    log = fake_decode.log_tail(20000)
    assert log.count(FAKE_BACKEND_WARNING) == 1, f"expected the warning once:\n{log}"
    line = next(x for x in log.splitlines() if FAKE_BACKEND_WARNING in x)
    assert "WARNING" in line, line
