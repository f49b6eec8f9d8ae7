"""Tiny random DeepSeek-V2/V3 checkpoints (MLA + MoE) served by the engine vs transformers.

The engine runs them over its paged latent cache with the attention backend the
registry picks for an MLA model; chunked prefill, batched decode and prefix-cache
hits must all give transformers' logits and greedy tokens, and leak no page.
"""

from __future__ import annotations

import pytest
import torch
from engine.harness import assert_idle, drain, greedy_req
from model.model_helpers import hf_greedy, make_checkpoint

from pdcore.config import ServerArgs
from pdcore.engine.engine import Engine
from pdcore.errors import PdcoreError
from pdcore.model.loader import load_model

CASES = {
    "v2": ("deepseek_v2", {}),
    "v3-q-lora": ("deepseek_v3", {"q_lora_rank": 24}),
}
PROMPTS = {
    "long": [3, 17, 250, 9, 101, 44, 7, 300, 12, 12, 480, 5, 66, 2, 190, 23, 77, 8, 400],
    "short": [5, 6, 7],
    "mid": [200, 199, 3, 45, 45, 46, 310, 11, 12, 13, 9],
    "one": [42],
    "other": [3, 17, 250, 9, 101, 44, 7, 300, 12, 12, 480, 5, 66, 2, 1, 2, 3, 4, 5, 6, 7],
}
MAX_NEW = 8
TOL = 1e-4


@pytest.fixture(scope="module", params=list(CASES))
def models(request, tmp_path_factory):
    """(pdcore LoadedModel, transformers model, HF greedy outputs of PROMPTS)."""
    torch.set_num_threads(1)
    family, overrides = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_checkpoint(folder, family, seed=7, **overrides)
    ours = load_model(str(folder), torch.float32, "cpu", load_tokenizer=False)
    want = {rid: hf_greedy(hf, p, MAX_NEW) for rid, p in PROMPTS.items()}
    return ours, hf, want


def make_engine(loaded, attention=None, **args) -> Engine:
    defaults = dict(max_total_tokens=512, page_size=4, chunked_prefill_size=8)
    return Engine(loaded.model, loaded.config, ServerArgs(**{**defaults, **args}), attention, "cpu")


def test_registry_picks_the_mla_backend_and_a_latent_pool(models):
    ours, _, _ = models
    engine = make_engine(ours)
    cfg = ours.config
    assert engine.attention_name == "torch_mla"
    assert engine.pool.shape.is_mla and engine.pool.shape.num_kv_heads == 1
    assert len(engine.pool.buffers()) == cfg.num_hidden_layers  # one latent tensor per layer
    latent, rope = engine.pool.layer_caches[0]
    assert latent.shape[-1] == cfg.mla.kv_lora_rank and rope.shape[-1] == cfg.mla.qk_rope_head_dim


def test_engine_logits_match_transformers_through_chunked_prefill_and_decode(models):
    """Every sampled row (last prefill chunk, then each decode step) equals HF's
    logits at that position, teacher-forced on the engine's own tokens."""
    ours, hf, want = models
    engine = make_engine(ours)
    seen: list[torch.Tensor] = []
    forward = engine.runner.forward

    def recording(batch):
        logits = forward(batch)
        if logits is not None:
            seen.append(logits.clone())
        return logits

    engine.runner.forward = recording
    prompt = PROMPTS["long"]  # 19 tokens: three prefill chunks of <= 8
    engine.add_request(greedy_req("r", prompt, MAX_NEW))
    res = drain(engine)["r"]
    assert res.tokens == want["long"]
    assert len(seen) == MAX_NEW
    with torch.no_grad():
        ref = hf(torch.tensor([prompt + res.tokens[:-1]])).logits[0, len(prompt) - 1 :]
    got = torch.cat(seen)
    diff = (got - ref).abs().max().item()
    assert diff < TOL, f"max abs logit diff {diff:.2e}"
    assert_idle(engine)


def test_concurrent_requests_match_transformers_greedy(models):
    ours, _, want = models
    engine = make_engine(ours)
    for rid, prompt in PROMPTS.items():
        engine.add_request(greedy_req(rid, prompt, MAX_NEW))
    results = drain(engine)
    assert {rid: r.tokens for rid, r in results.items()} == want
    assert_idle(engine)


def test_prefix_cache_hits_and_chunk_sizes_do_not_change_tokens(models):
    ours, _, want = models
    engine = make_engine(ours, chunked_prefill_size=4)
    for rid in ("long", "other", "long"):  # "other" shares 14 tokens with "long"
        engine.add_request(greedy_req(rid, PROMPTS[rid], MAX_NEW))
        res = drain(engine)[rid]
        assert res.tokens == want[rid], rid
        if rid == "other":
            assert res.final.cached_tokens >= 12
    assert res.final.cached_tokens >= 16  # the repeat reuses the cached prompt pages
    assert_idle(engine)
    whole = make_engine(ours, chunked_prefill_size=64)
    whole.add_request(greedy_req("long", PROMPTS["long"], MAX_NEW))
    assert drain(whole)["long"].tokens == want["long"]


def test_mha_backend_for_an_mla_model_is_refused(models):
    ours, _, _ = models
    with pytest.raises(PdcoreError, match=r"'torch' is for MHA .* needs MLA"):
        make_engine(ours, attention="torch")


def test_mla_backend_for_an_mha_model_is_refused():
    from engine.harness import tiny

    loaded = tiny()
    with pytest.raises(PdcoreError, match=r"'torch_mla' is for MLA .* needs MHA"):
        make_engine(loaded, attention="torch_mla")
