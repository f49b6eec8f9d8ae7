"""The model's name as SGLang serves it: any requested name is served, the served
name defaults to the model path, and every info route reports the same names
(sgl-router reads them to build its own ``/v1/models``)."""

from __future__ import annotations

import pytest
from server.harness import MODEL_PATH, asgi_stack

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "Hi"}]


async def test_chat_without_model_is_served_under_the_served_name(stack):
    r = await stack.client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert r.status_code == 200, f"a chat request without 'model' must be served: {r.text}"
    assert r.json()["model"] == MODEL_PATH, "the response names the served model"


@pytest.mark.parametrize("name", ["unknown", "gpt-4", "Some/Other-Model"])
async def test_any_model_name_is_served_by_default(stack, name):
    """SGLang serves a request whatever its 'model'; sgl-router sends "unknown" when
    the client gave none, so refusing other names breaks a router in front."""
    for path, body in (
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/completions", {"prompt": "Hi"}),
    ):
        r = await stack.client.post(path, json={**body, "model": name, "max_tokens": 2})
        assert r.status_code == 200, f"{path} with model {name!r}: {r.text}"
        assert r.json()["model"] == name, "the response echoes the requested name, as SGLang"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_strict_model_name_answers_404_for_another_name(path):
    body = {"messages": USER} if "chat" in path else {"prompt": "Hi"}
    async with asgi_stack(strict_model_name=True) as stack:
        r = await stack.client.post(path, json={**body, "model": "gpt-4", "max_tokens": 2})
        assert r.status_code == 404, f"--strict-model-name must refuse 'gpt-4': {r.text}"
        message = r.json()["error"]["message"]
        for part in ("'gpt-4'", MODEL_PATH, "--strict-model-name"):
            assert part in message, f"the error must name {part}: {message}"
        assert stack.engine.generate_reqs() == [], "a refused request reaches no engine"


@pytest.mark.parametrize("name", [MODEL_PATH, "Fake-Model-1B", "default", None])
async def test_strict_model_name_still_serves_the_models_own_names(name):
    body = {"messages": USER, "max_tokens": 2}
    if name is not None:
        body["model"] = name
    async with asgi_stack(strict_model_name=True) as stack:
        r = await stack.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, f"model {name!r} names this server's model: {r.text}"


async def _names(stack) -> dict:
    """What each info route says: ``{route: (model_path, served_model_name)}``, plus
    ``/v1/models``' ids."""
    out = {}
    for route in ("/model_info", "/get_model_info", "/server_info", "/get_server_info"):
        info = (await stack.client.get(route)).json()
        out[route] = (info["model_path"], info["served_model_name"])
    models = (await stack.client.get("/v1/models")).json()["data"]
    out["/v1/models"] = [m["id"] for m in models]
    return out


async def test_served_name_defaults_to_the_model_path_everywhere(stack):
    names = await _names(stack)
    expected = {r: (MODEL_PATH, MODEL_PATH) for r in names if r != "/v1/models"}
    assert names == {**expected, "/v1/models": [MODEL_PATH]}, (
        "without --served-model-name every route reports the model path, as SGLang"
    )


async def test_served_model_name_is_reported_everywhere():
    async with asgi_stack(served_model_name="tiny-chat") as stack:
        names = await _names(stack)
    expected = {r: (MODEL_PATH, "tiny-chat") for r in names if r != "/v1/models"}
    assert names == {**expected, "/v1/models": ["tiny-chat"]}, (
        "/server_info must carry served_model_name: sgl-router lists it in /v1/models"
    )


async def test_the_embedded_model_has_a_name_in_server_info():
    """Without --model-path (the embedded model) sgl-router would list "unknown" if
    /server_info had neither name; both are "default", which every route accepts."""
    async with asgi_stack(model_path=None) as stack:
        names = await _names(stack)
    expected = {r: ("default", "default") for r in names if r != "/v1/models"}
    assert names == {**expected, "/v1/models": ["default"]}, names


async def test_model_info_has_sglangs_fields(stack):
    info = (await stack.client.get("/model_info")).json()
    want = {"model_path": MODEL_PATH, "tokenizer_path": MODEL_PATH, "is_generation": True}
    assert {k: info.get(k) for k in want} == want, info
    assert info["weight_version"] == "default", "SGLang's weight version of a fresh server"
