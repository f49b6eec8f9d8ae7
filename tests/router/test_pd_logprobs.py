"""How the router puts prefill's prompt logprobs into decode's answer in PD mode."""

from __future__ import annotations

import json

from pdcore.router import pd_logprobs

PREFILL = {
    "meta_info": {
        "input_token_logprobs": [[None, 1, None], [-0.5, 2, None]],
        "input_top_logprobs": [None, [[-0.5, 2, None]]],
    }
}


def decode_answer() -> dict:
    return {
        "meta_info": {
            "input_token_logprobs": [],
            "input_top_logprobs": [],
            "output_token_logprobs": [[-0.1, 3, None]],
        }
    }


def test_any_return_logprob_wants_prefills_answer_even_with_the_default_start():
    assert pd_logprobs.wanted("/generate", {"return_logprob": True}), (
        "SGLang's default start (-1) still has one prompt entry, and only prefill has it"
    )
    assert pd_logprobs.wanted("/generate", {"return_logprob": [False, True]})
    assert not pd_logprobs.wanted("/generate", {"logprob_start_len": 0})
    assert pd_logprobs.wanted("/v1/completions", {"echo": True, "logprobs": 0})
    assert pd_logprobs.wanted("/v1/completions", {"prompt_logprobs": 1})
    assert not pd_logprobs.wanted("/v1/completions", {"logprobs": 2}), "no echo: outputs only"
    assert not pd_logprobs.wanted("/v1/chat/completions", {"logprobs": True})


def test_prefill_input_logprobs_go_in_front_of_decodes():
    merged = pd_logprobs.merge(PREFILL, decode_answer())["meta_info"]
    assert merged["input_token_logprobs"] == PREFILL["meta_info"]["input_token_logprobs"]
    assert merged["input_top_logprobs"] == PREFILL["meta_info"]["input_top_logprobs"]
    assert merged["output_token_logprobs"] == [[-0.1, 3, None]], "decode's outputs stay"
    batch = pd_logprobs.merge([PREFILL, PREFILL], [decode_answer(), decode_answer()])
    assert all(len(m["meta_info"]["input_token_logprobs"]) == 2 for m in batch)


def test_a_prompt_decode_prefilled_itself_keeps_decodes_own():
    own = decode_answer()
    own["meta_info"].update(pd_local_prefill=True, input_token_logprobs=[[None, 1, None]])
    merged = pd_logprobs.merge(PREFILL, own)["meta_info"]
    assert merged["input_token_logprobs"] == [[None, 1, None]], "prefill computed nothing"


def test_every_streamed_generate_event_gets_the_prompt_logprobs():
    events = [decode_answer(), decode_answer()]
    block = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    out = pd_logprobs.EventMerger(PREFILL).block(block + b"data: [DONE]\n\n")
    payloads = [p for p in out.split(b"\n\n") if p.startswith(b"data: {")]
    assert len(payloads) == 2 and out.endswith(b"data: [DONE]\n\n")
    for p in payloads:
        meta = json.loads(p[6:])["meta_info"]
        assert meta["input_token_logprobs"] == PREFILL["meta_info"]["input_token_logprobs"]


def completion(prefill: bool) -> dict:
    """An echo + logprobs choice: prefill's has the 2 prompt tokens and its 1 output."""
    if prefill:
        lp = {
            "tokens": ["a", "b", "c"],
            "token_logprobs": [None, -0.5, -0.7],
            "text_offset": [0, 1, 2],
            "top_logprobs": [None, {"b": -0.5}, {"c": -0.7}],
        }
        extra = {"prompt_logprobs": [None, {"2": {"logprob": -0.5}}]}
    else:
        lp = {
            "tokens": ["c", "d"],
            "token_logprobs": [-0.7, -0.9],
            "text_offset": [2, 3],
            "top_logprobs": [{"c": -0.7}, {"d": -0.9}],
        }
        extra = {"prompt_logprobs": None}
    choice = {"index": 0, "text": "abcd", "logprobs": lp, **extra}
    return {"choices": [choice], "usage": {"prompt_tokens": 2}}


def test_completions_get_prefills_prompt_part_in_front_of_decodes_outputs():
    merged = pd_logprobs.merge(completion(True), completion(False))["choices"][0]
    assert merged["logprobs"]["tokens"] == ["a", "b", "c", "d"], "prefill's output is dropped"
    assert merged["logprobs"]["token_logprobs"] == [None, -0.5, -0.7, -0.9]
    assert merged["logprobs"]["text_offset"] == [0, 1, 2, 3]
    assert merged["logprobs"]["top_logprobs"][0] is None
    assert merged["prompt_logprobs"] == [None, {"2": {"logprob": -0.5}}]


def test_a_completions_stream_gets_the_prompt_part_once():
    first = completion(False)
    first["choices"][0]["logprobs"] = {k: [] for k in pd_logprobs.COMPLETION_KEYS}
    later = completion(False)
    block = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (first, later))
    out = pd_logprobs.EventMerger(completion(True)).block(block)
    one, two = (json.loads(p[6:]) for p in out.split(b"\n\n") if p.startswith(b"data: "))
    assert one["choices"][0]["logprobs"]["tokens"] == ["a", "b"]
    assert two["choices"][0]["logprobs"]["tokens"] == ["c", "d"], "not merged a second time"
