"""pdcore's DeepSeek-V2/V3 (MLA + MoE) vs transformers on tiny random checkpoints.

Each case covers a variant of the attention or the router: full vs low-rank
queries, V2's greedy and group-limited routing, V3's biased sigmoid routing
with group-limited top-k, interleaved and half-split rotary, YaRN with
DeepSeek's mscale on the softmax. Logits over the paged latent cache (one pass
and chunked) and greedy continuations must match transformers (float32).
"""

from __future__ import annotations

import pytest
import torch
from model.model_helpers import hf_greedy, hf_logits, make_checkpoint

from pdcore.model.loader import load_model
from pdcore.model.reference_runner import greedy_generate, prompt_logits

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 64,
    "mscale": 1.0,
    "mscale_all_dim": 0.707,
}
CASES = {
    "v2": dict(family="deepseek_v2"),
    "v2-q-lora-group-yarn": dict(
        family="deepseek_v2",
        q_lora_rank=24,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.5,
        rope_parameters=YARN,
    ),
    "v3": dict(family="deepseek_v3"),
    "v3-q-lora-half-split-rope": dict(family="deepseek_v3", q_lora_rank=24, rope_interleave=False),
}
PROMPT = [3, 17, 250, 9, 101, 44, 7, 300, 12, 12, 480, 5, 66, 2, 190, 23]
TOL = 1e-4


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(pdcore LoadedModel, transformers model) of one case."""
    folder = tmp_path_factory.mktemp(request.param)
    spec = dict(CASES[request.param])
    hf = make_checkpoint(folder, spec.pop("family"), **spec)
    return load_model(str(folder), torch.float32, "cpu", load_tokenizer=False), hf


def test_prompt_logits_match(pair):
    ours, hf = pair
    got = prompt_logits(ours.model, PROMPT)
    want = hf_logits(hf, PROMPT)
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"max abs logit diff {diff:.2e}"


def test_chunked_prefill_matches_one_pass(pair):
    """Later chunks attend to earlier ones through the paged latent cache."""
    ours, _ = pair
    whole = prompt_logits(ours.model, PROMPT, page_size=4)
    chunked = prompt_logits(ours.model, PROMPT, page_size=3, prefill_chunk=5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches(pair):
    ours, hf = pair
    assert greedy_generate(ours.model, PROMPT, 20) == hf_greedy(hf, PROMPT, 20)


def test_config_is_mla_and_moe(pair):
    ours, hf = pair
    cfg, ref = ours.config, hf.config
    assert cfg.architecture == type(hf).__name__
    assert cfg.mla.kv_lora_rank == ref.kv_lora_rank and cfg.mla.q_lora_rank == ref.q_lora_rank
    assert cfg.moe.n_routed_experts == ref.n_routed_experts
    assert cfg.moe.topk_method == ("noaux_tc" if "V3" in cfg.architecture else ref.topk_method)
    spec = cfg.kv_cache_spec()
    assert (spec.kind, spec.num_kv_heads) == ("mla", 1)
    assert spec.head_dim == ref.kv_lora_rank + ref.qk_rope_head_dim
    attn = hf.model.layers[0].self_attn
    assert spec.softmax_scale == pytest.approx(attn.scaling, rel=1e-12)
    assert type(ours.model.model.layers[0].mlp).__name__ == "GatedMLP"  # first_k_dense_replace
    assert type(ours.model.model.layers[1].mlp).__name__ == "MoE"


def test_router_stays_float32_in_a_bfloat16_model(tmp_path):
    hf = make_checkpoint(tmp_path, "deepseek_v3", seed=1)
    ours = load_model(str(tmp_path), torch.bfloat16, "cpu", load_tokenizer=False)
    gate = ours.model.model.layers[1].mlp.gate
    assert gate.weight.dtype == gate.e_score_correction_bias.dtype == torch.float32
    assert ours.model.model.layers[1].mlp.experts[0].down_proj.weight.dtype == torch.bfloat16
    got = prompt_logits(ours.model, PROMPT)
    want = hf_logits(hf, PROMPT)
    # bfloat16 rounding flips an expert choice at a position or two (transformers'
    # own bfloat16 run does too), so most positions, not all, stay close.
    per_position = (got - want).abs().amax(dim=-1)
    assert per_position.median() < 0.05 * want.abs().max()
