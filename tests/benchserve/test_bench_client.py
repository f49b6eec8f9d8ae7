"""The streaming clients against a scripted server: token counts, TTFT/ITL bookkeeping,
request bodies, and failures turned into results with their error text."""

from __future__ import annotations

import asyncio

import pytest
from benchserve.stub_server import MODEL, VOCAB, StubServer
from e2e.server_process import free_port

from pdcore.benchserve import client
from pdcore.benchserve.client import ClientOptions, ServerError
from pdcore.benchserve.datasets import RequestSpec


@pytest.fixture
def stub(request):
    kwargs = getattr(request, "param", {})
    server = StubServer(**kwargs)
    yield server
    server.stop()


def send(server: StubServer, backend: str, spec: RequestSpec, **opts):
    async def go():
        async with client.new_session() as session:
            options = ClientOptions(backend, server.url, model=MODEL, **opts)
            return await client.send(session, options, spec)

    return asyncio.run(go())


@pytest.mark.parametrize("stub", [{"chunk_sizes": (1, 3, 2)}], indirect=True)
def test_native_chunk_of_k_tokens_adds_k_equal_gaps(stub):
    result = send(stub, "sglang", RequestSpec([1, 2, 3, 4], 4, 6))
    assert result.success, result.error
    assert (result.output_len, result.prompt_len) == (6, 4)
    # chunks of 1, 3, 2 tokens: no gap for the first, then 3 equal ones, then 2 equal ones
    assert len(result.itl) == 5, result.itl
    assert result.itl[0] == result.itl[1] == result.itl[2], result.itl
    assert result.itl[3] == result.itl[4], result.itl
    assert [n for _, n in result.chunks] == [1, 3, 2]
    assert 0 < result.ttft < result.latency


def test_native_body_streams_token_ids_with_ignore_eos(stub):
    send(stub, "sglang", RequestSpec([7, 8], 2, 3), extra_body={"rid": "x"})
    body = stub.bodies[-1]
    assert body["input_ids"] == [7, 8] and "text" not in body, body
    assert body["stream"] is True and body["rid"] == "x", body
    assert body["sampling_params"] == {"max_new_tokens": 3, "temperature": 0.0, "ignore_eos": True}


def test_native_sends_text_prompts_as_text(stub):
    send(stub, "sglang", RequestSpec("hello there", 2, 2), ignore_eos=False)
    body = stub.bodies[-1]
    assert body["text"] == "hello there" and "input_ids" not in body, body
    assert body["sampling_params"]["ignore_eos"] is False


def test_openai_counts_tokens_from_usage_and_gaps_between_chunks(stub):
    result = send(stub, "openai", RequestSpec("a b c", 3, 5))
    assert result.success, result.error
    assert (result.output_len, result.prompt_len) == (5, 3)
    assert len(result.itl) == 4, "one gap between each of the 5 text chunks"
    body = stub.bodies[-1]
    assert body["model"] == MODEL and body["max_tokens"] == 5 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}, body


@pytest.mark.parametrize("stub", [{"fail": lambda body: (400, "prompt too long")}], indirect=True)
def test_http_error_is_a_failed_result_with_the_servers_message(stub):
    result = send(stub, "sglang", RequestSpec([1], 1, 2))
    assert not result.success
    assert result.error == "HTTP 400: prompt too long", result.error


@pytest.mark.parametrize("stub", [{"fail": lambda body: (0, "decode died")}], indirect=True)
@pytest.mark.parametrize("backend", ["sglang", "openai"])
def test_error_event_mid_stream_is_a_failed_result(stub, backend):
    result = send(stub, backend, RequestSpec("a b", 2, 4))
    assert not result.success
    assert result.error == "decode died", result.error


@pytest.mark.parametrize("stub", [{"cut": True}], indirect=True)
@pytest.mark.parametrize("backend", ["sglang", "openai"])
def test_stream_cut_before_done_is_a_failed_result(stub, backend):
    result = send(stub, backend, RequestSpec("a b", 2, 4))
    assert not result.success
    assert "ended before 'data: [DONE]'" in result.error, result.error


def test_unreachable_server_is_a_failed_result_not_an_exception():
    url = f"http://127.0.0.1:{free_port()}"

    async def go():
        async with client.new_session() as session:
            return await client.send(session, ClientOptions("sglang", url), RequestSpec([1], 1, 1))

    result = asyncio.run(go())
    assert not result.success and "Connect" in result.error, result.error


def server_info(url: str) -> dict:
    async def go():
        async with client.new_session() as session:
            return await client.server_info(session, url)

    return asyncio.run(go())


def test_server_info_reads_get_model_info(stub):
    info = server_info(stub.url)
    assert (info["served_model_name"], info["vocab_size"]) == (MODEL, VOCAB), info


@pytest.mark.parametrize("stub", [{"model_info": False}], indirect=True)
def test_server_info_falls_back_to_v1_models(stub):
    info = server_info(stub.url)
    assert info["served_model_name"] == MODEL and "vocab_size" not in info, info


def test_server_info_of_nothing_names_the_url_and_the_flag():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match="cannot reach") as e:
        server_info(url)
    assert url in str(e.value) and "--base-url" in str(e.value)
