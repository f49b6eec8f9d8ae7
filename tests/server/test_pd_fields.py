"""PD fields on the front end: carried into ``GenerateReq``, required in PD modes."""

from __future__ import annotations

import pytest
from server.harness import asgi_stack

PD = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 8998, "bootstrap_room": 2**62 + 3}


@pytest.fixture
async def decode_stack():
    async with asgi_stack(disaggregation_mode="decode") as s:
        yield s


@pytest.mark.anyio
async def test_generate_carries_bootstrap_fields(decode_stack):
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2}, **PD}
    r = await decode_stack.client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    (req,) = decode_stack.engine.generate_reqs()
    assert (req.bootstrap_host, req.bootstrap_port, req.bootstrap_room) == tuple(PD.values())


@pytest.mark.anyio
async def test_openai_completion_carries_bootstrap_fields(decode_stack):
    body = {"prompt": "Hi", "max_tokens": 2, **PD}
    r = await decode_stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    (req,) = decode_stack.engine.generate_reqs()
    assert req.bootstrap_room == PD["bootstrap_room"]


@pytest.mark.anyio
@pytest.mark.parametrize("missing", list(PD))
async def test_pd_mode_requires_each_field(decode_stack, missing):
    body = {"text": "Hi", **{k: v for k, v in PD.items() if k != missing}}
    r = await decode_stack.client.post("/generate", json=body)
    assert r.status_code == 400 and missing in r.text
    assert decode_stack.engine.generate_reqs() == []


@pytest.mark.anyio
async def test_pd_mode_refuses_n_above_one(decode_stack):
    body = {"text": "Hi", "sampling_params": {"n": 2}, **PD}
    r = await decode_stack.client.post("/generate", json=body)
    assert r.status_code == 400 and "n > 1" in r.text
