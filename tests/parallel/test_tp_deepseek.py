"""Tiny DeepSeek-V2/V3 (MLA + MoE) as a TP=2 group of real gloo ranks generate what one
rank generates: query heads, kv_b/o projections, every expert and the shared experts
split over the ranks, the latent KV path and the router replicated."""

from __future__ import annotations

import pytest
from model.model_helpers import make_checkpoint
from parallel.tp_ranks import run_group

pytestmark = pytest.mark.timeout(600)

PROMPTS = [list(range(3, 40)), [5, 9, 11, 200, 7, 7, 1], list(range(100, 123))]
CASES = {
    "v2": ("deepseek_v2", {}),
    "v3 q-lora": ("deepseek_v3", {"q_lora_rank": 24}),
}


@pytest.mark.parametrize("case", CASES)
def test_tp2_equals_tp1(tmp_path, case):
    family, overrides = CASES[case]
    make_checkpoint(tmp_path, family, seed=3, **overrides)
    one = run_group(str(tmp_path), 1, PROMPTS)
    two = run_group(str(tmp_path), 2, PROMPTS)
    for i, ((ids1, lp1, in1), (ids2, lp2, in2)) in enumerate(zip(one, two, strict=True)):
        assert ids2 == ids1, f"{case}: prompt {i} differs at TP=2: {ids2} != {ids1}"
        worst = max(abs(a - b) for a, b in zip(lp1, lp2, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} logprobs differ by {worst:.2e}"
        worst = max(abs(a - b) for a, b in zip(in1, in2, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} prompt logprobs differ by {worst:.2e}"
