"""The router's input-logprob merge leaves a prompt decode prefilled itself alone."""

from __future__ import annotations

from pdcore.router import pd_logprobs


def test_a_locally_prefilled_answer_keeps_decodes_own_input_logprobs():
    prefill = {"meta_info": {"input_token_logprobs": [[None, 1, None]], "pd_local_prefill": True}}
    mine = [[None, 1, None], [-0.5, 2, None]]
    decode = {"meta_info": {"input_token_logprobs": mine, "pd_local_prefill": True}}
    merged = pd_logprobs.merge(prefill, decode)
    assert merged["meta_info"]["input_token_logprobs"] == mine, "prefill's were put in front"


def test_a_batch_merges_only_the_prompts_that_went_through_pd():
    prefill = {"meta_info": {"input_token_logprobs": [[None, 1, None]]}}
    local = {"meta_info": {"pd_local_prefill": True}}
    merged = pd_logprobs.merge([prefill, prefill], [{"meta_info": {}}, local])
    assert merged[0]["meta_info"]["input_token_logprobs"] == [[None, 1, None]]
    assert "input_token_logprobs" not in merged[1]["meta_info"]
