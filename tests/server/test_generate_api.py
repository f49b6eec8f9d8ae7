"""SGLang ``/generate``: shapes, streaming, batches, n>1, logprobs, stop strings."""

from __future__ import annotations

import itertools

import anyio
import pytest
from server.fake_backend import DEFAULT_SCRIPT, EOS
from server.harness import sse_events

pytestmark = pytest.mark.anyio


async def generate(stack, **body):
    r = await stack.client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_text_prompt_returns_text_ids_and_meta_info(stack):
    out = await generate(stack, text="Hi", sampling_params={"max_new_tokens": 5})
    assert out["text"] == DEFAULT_SCRIPT[:5]
    assert out["output_ids"] == list(DEFAULT_SCRIPT[:5].encode())
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["prompt_tokens"] == 3 and meta["completion_tokens"] == 5
    assert meta["cached_tokens"] == 0 and meta["e2e_latency"] > 0
    assert meta["id"]


async def test_input_ids_prompt_and_eos_finish(stack):
    out = await generate(stack, input_ids=list(b"EOS?"), sampling_params={"max_new_tokens": 50})
    assert out["text"] == "short answer"
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS}
    assert out["output_ids"][-1] == EOS and out["meta_info"]["completion_tokens"] == 13


async def test_default_max_new_tokens_is_capped_by_the_context(stack):
    prompt = "x" * 200  # 201 tokens: SGLang's default 128 would overflow 256
    out = await generate(stack, text=prompt)
    assert out["meta_info"]["completion_tokens"] == 256 - 201


async def test_multi_byte_characters_are_never_split_while_streaming(stack):
    n = len("Hello world! Ünïcødé 你好".encode())
    r = await stack.client.post(
        "/generate", json={"text": "Hi", "stream": True, "sampling_params": {"max_new_tokens": n}}
    )
    texts = [c["text"] for c in sse_events(r.text)[:-1]]
    assert texts[-1] == "Hello world! Ünïcødé 你好"
    assert not any("\ufffd" in t for t in texts)
    cut = await generate(stack, text="Hi", sampling_params={"max_new_tokens": n - 1})
    assert cut["text"] == "Hello world! Ünïcødé 你\ufffd"  # a dangling byte, flushed at the end


async def test_stream_sends_cumulative_text_then_done(stack):
    r = await stack.client.post(
        "/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 8}, "stream": True}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert texts[-1] == DEFAULT_SCRIPT[:8]
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


async def test_batched_text_returns_a_list_in_order(stack):
    out = await generate(
        stack,
        text=["Hi", "EOS please"],
        sampling_params=[{"max_new_tokens": 3}, {"max_new_tokens": 30}],
        rid=["a", "b"],
    )
    assert [o["meta_info"]["id"] for o in out] == ["a", "b"]
    assert out[0]["text"] == DEFAULT_SCRIPT[:3] and out[1]["text"] == "short answer"


async def test_batched_input_ids_stream_tags_each_chunk_with_its_index(stack):
    r = await stack.client.post(
        "/generate",
        json={
            "input_ids": [[1, 2], [3, 4, 5]],
            "sampling_params": {"max_new_tokens": 2},
            "stream": True,
        },
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    finals = {c["index"]: c for c in events[:-1] if c["meta_info"]["finish_reason"]}
    assert set(finals) == {0, 1}
    assert finals[1]["meta_info"]["prompt_tokens"] == 3


async def test_n_choices_get_suffixed_rids(stack):
    out = await generate(stack, text="Hi", rid="req", sampling_params={"max_new_tokens": 2, "n": 3})
    assert [o["meta_info"]["id"] for o in out] == ["req-0", "req-1", "req-2"]
    assert sorted(r.rid for r in stack.engine.generate_reqs()) == ["req-0", "req-1", "req-2"]
    assert all(r.sampling["n"] == 1 for r in stack.engine.generate_reqs())


async def test_logprobs_are_sglang_triples(stack):
    out = await generate(
        stack,
        text="Hi",
        sampling_params={"max_new_tokens": 3},
        return_logprob=True,
        top_logprobs_num=2,
        return_text_in_logprobs=True,
    )
    meta = out["meta_info"]
    assert meta["output_token_logprobs"] == [[-0.5, ord(c), c] for c in DEFAULT_SCRIPT[:3]]
    top = meta["output_top_logprobs"]
    assert len(top) == 3 and top[0] == [[-0.5, ord("H"), "H"], [-1.5, ord("I"), "I"]]
    without_text = await generate(
        stack, text="Hi", sampling_params={"max_new_tokens": 1}, return_logprob=True
    )
    assert without_text["meta_info"]["output_token_logprobs"] == [[-0.5, ord("H"), None]]
    assert "output_top_logprobs" not in without_text["meta_info"]


async def test_stop_string_spanning_tokens_is_cut_and_aborts_the_engine(stack):
    out = await generate(
        stack, text="Hi", rid="s1", sampling_params={"max_new_tokens": 40, "stop": "world"}
    )
    assert out["text"] == "Hello "
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "world"}
    with anyio.fail_after(5):
        while "s1" not in stack.engine.aborted():
            await anyio.sleep(0.005)


async def test_stop_string_with_multibyte_characters_and_no_stop_trim(stack):
    out = await generate(stack, text="Hi", sampling_params={"max_new_tokens": 60, "stop": ["你好"]})
    assert out["text"] == "Hello world! Ünïcødé "
    kept = await generate(
        stack,
        text="Hi",
        sampling_params={"max_new_tokens": 60, "stop": ["cødé"], "no_stop_trim": True},
    )
    assert kept["text"] == "Hello world! Ünïcødé"


async def test_streamed_text_never_shows_part_of_a_stop_string(stack):
    r = await stack.client.post(
        "/generate",
        json={"text": "Hi", "stream": True, "sampling_params": {"stop": ["world!"]}},
    )
    texts = [c["text"] for c in sse_events(r.text)[:-1]]
    assert texts[-1] == "Hello "
    assert all(t in ("", "H", "He", "Hel", "Hell", "Hello", "Hello ") for t in texts)


async def test_stop_token_ids_finish_with_the_matched_id(stack):
    out = await generate(
        stack, text="Hi", sampling_params={"max_new_tokens": 40, "stop_token_ids": [ord("w")]}
    )
    assert out["text"] == "Hello "  # the matched stop token is trimmed, like SGLang
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": ord("w")}


async def test_extra_sglang_fields_are_accepted(stack):
    out = await generate(
        stack,
        text="Hi",
        sampling_params={
            "max_new_tokens": 2,
            "json_schema": None,
            "spaces_between_special_tokens": True,
        },
        rid="extra-1",
        log_metrics=True,
        return_text_in_logprobs=False,
        stream_options={"include_usage": True},
        model="whatever",
        lora_path=None,
        custom_logit_processor=None,
        logprob_start_len=-1,
        bootstrap_host="10.0.0.1",
        bootstrap_port=8998,
        bootstrap_room=12345,
        modalities=[],
    )
    assert out["meta_info"]["id"] == "extra-1"


async def test_repeated_prompt_reports_cached_tokens(stack):
    body = {"text": "x" * 40, "sampling_params": {"max_new_tokens": 1}}
    await generate(stack, **body)
    again = await generate(stack, **body)
    assert again["meta_info"]["cached_tokens"] == 32
