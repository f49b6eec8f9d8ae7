"""Prompt logprobs in the engine (SGLang's ``logprob_start_len``): the values, and that
chunking, the prefix cache and prompt-only (``max_new_tokens`` 0) requests keep them."""

from __future__ import annotations

import pytest
import torch
from engine.harness import assert_idle, greedy_req, make_engine, tiny
from engine.reference import all_logits

from pdcore.engine.io_struct import EngineError, GenerateReq, TokenOut

PROMPT = [(7 * i + 3) % 120 + 2 for i in range(23)]


def run(engine, *reqs: GenerateReq) -> dict[str, list]:
    """Every output (TokenOut or EngineError) per rid, stepping until idle."""
    for req in reqs:
        engine.add_request(req)
    outs: dict[str, list] = {}
    while engine.has_work():
        for out in engine.step():
            outs.setdefault(out.rid, []).append(out)
        engine.kv_usage().check()
    return outs


def prompt_logprobs(outs: list[TokenOut]) -> tuple[list, list]:
    """``(input_logprobs, input_top_logprobs)`` of one request: exactly one output has them."""
    carrying = [o for o in outs if o.input_logprobs]
    assert len(carrying) == 1, f"prompt logprobs must come exactly once, got {len(carrying)}"
    return carrying[0].input_logprobs, carrying[0].input_top_logprobs


def lp_req(rid, start, max_new_tokens=2, top=0, prompt=PROMPT) -> GenerateReq:
    return GenerateReq(
        rid,
        list(prompt),
        {"temperature": 0.0, "max_new_tokens": max_new_tokens},
        return_logprob=True,
        top_logprobs_num=top,
        logprob_start_len=start,
    )


def reference(prompt=PROMPT) -> torch.Tensor:
    """``[len(prompt) - 1]``: the dense model's logprob of token ``p + 1`` after ``p``."""
    logp = torch.log_softmax(all_logits(tiny().model, prompt).float(), -1)
    return logp[:-1].gather(1, torch.tensor(prompt[1:])[:, None]).squeeze(1)


def test_prompt_logprobs_from_zero_match_the_dense_model():
    values, tops = prompt_logprobs(run(make_engine(), lp_req("a", 0, top=3))["a"])
    assert values[0] is None, "the first prompt token has no logprob (nothing precedes it)"
    assert len(values) == len(PROMPT), "one entry per prompt token from logprob_start_len on"
    expected = reference()
    assert torch.allclose(torch.tensor(values[1:]), expected.float(), atol=1e-5), (
        "prompt logprobs must be log_softmax of the logits before each token"
    )
    logp = torch.log_softmax(all_logits(tiny().model, PROMPT).float(), -1)
    assert tops[0] is None and len(tops) == len(PROMPT)
    assert [int(t) for t, _ in tops[5]] == logp[4].topk(3).indices.tolist(), (
        "the top-k of a prompt position are the most likely tokens after the one before it"
    )


@pytest.mark.parametrize("start", [1, 10, len(PROMPT) - 1])
def test_logprob_start_len_is_where_the_entries_start_the_first_one_none(start):
    values, _ = prompt_logprobs(run(make_engine(), lp_req("a", start))["a"])
    assert len(values) == len(PROMPT) - start, "entries for prompt tokens start.. end"
    assert values[0] is None, "SGLang reports None for the token at logprob_start_len"
    assert torch.allclose(torch.tensor(values[1:]), reference()[start:].float(), atol=1e-5)


def test_default_start_gives_one_entry_the_last_prompt_token_with_none():
    values, _ = prompt_logprobs(run(make_engine(), lp_req("a", -1))["a"])
    assert values == [None], "-1: only the last prompt token's entry, with logprob None"


def test_chunked_prefill_gives_the_same_values_as_one_chunk():
    whole = prompt_logprobs(run(make_engine(chunked_prefill_size=64), lp_req("a", 0, top=2))["a"])
    chunked = prompt_logprobs(run(make_engine(chunked_prefill_size=4), lp_req("a", 0, top=2))["a"])
    assert torch.allclose(torch.tensor(whole[0][1:]), torch.tensor(chunked[0][1:]), atol=1e-6)
    assert [[t for t, _ in s] for s in whole[1][1:]] == [[t for t, _ in s] for s in chunked[1][1:]]


def test_a_cached_prefix_is_recomputed_from_logprob_start_len():
    engine = make_engine()
    run(engine, greedy_req("warm", PROMPT, 2))  # caches the prompt's full pages
    outs = run(engine, lp_req("a", 2))["a"]
    values, _ = prompt_logprobs(outs)
    assert len(values) == len(PROMPT) - 2
    assert torch.allclose(torch.tensor(values[1:]), reference()[2:].float(), atol=1e-5), (
        "positions in the cached prefix must still get their logprobs"
    )
    assert outs[-1].cached_tokens <= 2, "the cache may serve only positions before the start"
    again = run(engine, greedy_req("again", PROMPT, 2))["again"]
    assert again[-1].cached_tokens >= 16, "requests without prompt logprobs still use the cache"
    assert_idle(engine)


def test_max_new_tokens_zero_scores_the_prompt_without_an_output_token():
    engine = make_engine()
    outs = run(engine, lp_req("a", 0, max_new_tokens=0))["a"]
    values, _ = prompt_logprobs(outs)
    assert len(values) == len(PROMPT) and values[0] is None
    assert torch.allclose(torch.tensor(values[1:]), reference().float(), atol=1e-5)
    assert [t for o in outs for t in o.token_ids] == [], "max_new_tokens 0: no output token"
    assert outs[-1].finish_reason["type"] == "length"
    assert_idle(engine)


@pytest.mark.parametrize("start", [len(PROMPT), -2])
def test_logprob_start_len_outside_the_prompt_is_an_error(start):
    outs = run(make_engine(), lp_req("a", start))["a"]
    assert len(outs) == 1 and isinstance(outs[0], EngineError), outs
    assert "logprob_start_len" in outs[0].message and outs[0].status == 400


def test_scoring_a_few_positions_at_a_time_gives_the_same_values(monkeypatch):
    """Long prompts are scored in slices (no [prompt, vocab] logits at once)."""
    from pdcore.engine import prompt_logprobs as scoring

    monkeypatch.setattr(scoring, "SCORE_CHUNK", 5)
    values, tops = prompt_logprobs(run(make_engine(), lp_req("a", 0, top=2))["a"])
    assert torch.allclose(torch.tensor(values[1:]), reference().float(), atol=1e-5)
    assert len(tops) == len(PROMPT) and all(len(step) == 2 for step in tops[1:])
