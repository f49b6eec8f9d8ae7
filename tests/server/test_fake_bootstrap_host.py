"""SGLang's fake bootstrap host (2.2.2.2) on the front end: refused unless the whole
server runs the fake transfer backend; the server's own probes take the fake path
through an engine-message flag that no request body can set."""

from __future__ import annotations

import pytest
from server.harness import asgi_stack

from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST

FAKE = {"bootstrap_host": FAKE_BOOTSTRAP_HOST, "bootstrap_port": 8998, "bootstrap_room": 7}


@pytest.fixture(params=["prefill", "decode"])
async def pd_stack(request):
    async with asgi_stack(disaggregation_mode=request.param) as s:
        yield s


@pytest.fixture
async def fake_backend_stack():
    async with asgi_stack(
        disaggregation_mode="decode", disaggregation_transfer_backend="fake"
    ) as s:
        yield s


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ],
)
async def test_client_fake_host_is_refused_on_a_real_backend(pd_stack, path, body):
    r = await pd_stack.client.post(path, json={**body, **FAKE})
    assert r.status_code == 400, (
        f"the fake host would make decode serve pages nobody wrote: {r.status_code} {r.text}"
    )
    message = r.json()["error"]["message"]
    assert FAKE_BOOTSTRAP_HOST in message and "reserved" in message, message
    assert "--disaggregation-transfer-backend fake" in message, message
    assert pd_stack.engine.generate_reqs() == [], "a refused request must not reach the engine"


@pytest.mark.anyio
async def test_client_fake_host_is_accepted_with_the_fake_backend(fake_backend_stack):
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2}, **FAKE}
    r = await fake_backend_stack.client.post("/generate", json=body)
    assert r.status_code == 200, f"SGLang's fake host stays usable on a fake server: {r.text}"
    (req,) = fake_backend_stack.engine.generate_reqs()
    assert req.bootstrap_host == FAKE_BOOTSTRAP_HOST


@pytest.mark.anyio
async def test_health_probe_takes_the_fake_path_through_the_internal_flag(pd_stack):
    r = await pd_stack.client.get("/health_generate")
    assert r.status_code == 200, r.text
    (req,) = pd_stack.engine.generate_reqs()
    assert req.fake_transfer is True, "the probe has no peer: it must ask for the fake path"


@pytest.mark.anyio
async def test_no_body_field_sets_the_internal_fake_flag(pd_stack):
    body = {
        "text": "Hi",
        "sampling_params": {"max_new_tokens": 2},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": 8998,
        "bootstrap_room": 9,
        "fake_transfer": True,
    }
    r = await pd_stack.client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    (req,) = pd_stack.engine.generate_reqs()
    assert req.fake_transfer is False, "a client must not reach the fake path by a JSON field"
