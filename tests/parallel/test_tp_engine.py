"""Tensor-parallel engines (real gloo ranks) generate what one rank generates.

Each case is a shape TP must handle: KV heads split evenly over ranks, KV
heads replicated (more ranks than KV heads), and a vocabulary that does not
divide by the TP size (padded embedding and LM head shards).
"""

from __future__ import annotations

import pytest
from model.model_helpers import make_checkpoint
from parallel.tp_ranks import run_group

from pdcore.distributed.state import kv_head_range

pytestmark = pytest.mark.timeout(600)

PROMPTS = [list(range(3, 40)), [5, 9, 11, 200, 7, 7, 1], list(range(100, 123))]
CASES = {
    "kv heads split": dict(num_key_value_heads=2),
    "kv heads replicated": dict(num_key_value_heads=1),
    "odd vocab, tied": dict(num_key_value_heads=2, vocab_size=511, tie_word_embeddings=True),
}


@pytest.mark.parametrize("case", CASES)
def test_tp2_equals_tp1(tmp_path, case):
    make_checkpoint(tmp_path, "qwen3", seed=3, **CASES[case])
    one = run_group(str(tmp_path), 1, PROMPTS)
    two = run_group(str(tmp_path), 2, PROMPTS)
    for i, ((ids1, lp1, in1), (ids2, lp2, in2)) in enumerate(zip(one, two, strict=True)):
        assert ids2 == ids1, f"{case}: prompt {i} differs at TP=2: {ids2} != {ids1}"
        worst = max(abs(a - b) for a, b in zip(lp1, lp2, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} logprobs differ by {worst:.2e}"
        assert len(in1) == len(in2) == len(PROMPTS[i]) - 1, "every prompt token but the first"
        worst = max(abs(a - b) for a, b in zip(in1, in2, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} prompt logprobs differ by {worst:.2e}"


def test_kv_head_ranges():
    assert [kv_head_range(4, r, 2) for r in range(2)] == [(0, 2), (2, 2)]
    assert [kv_head_range(2, r, 4) for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match="multiple of the model's 2 KV heads"):
        kv_head_range(2, 0, 3)
    with pytest.raises(ValueError, match="does not split evenly"):
        kv_head_range(4, 0, 3)


def test_tp2_equals_tp1_through_retraction_and_shared_pages(tmp_path):
    """A KV budget too small for all three requests forces a retraction, and two
    equal prompts share cached pages (the prefix cache swaps a running request's
    pages in place): the followers' mirrored page lists must follow every change."""
    make_checkpoint(tmp_path, "qwen3", seed=3, num_key_value_heads=2)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[2]]
    stats1, stats2 = {}, {}
    tight = dict(max_new=24, max_total_tokens=96)
    one = run_group(str(tmp_path), 1, prompts, stats=stats1, **tight)
    two = run_group(str(tmp_path), 2, prompts, stats=stats2, **tight)
    assert stats2["retractions"] >= 1, f"the budget must force a retraction at TP=2: {stats2}"
    for i, ((ids1, *_), (ids2, *_)) in enumerate(zip(one, two, strict=True)):
        assert ids2 == ids1, f"prompt {i} differs at TP=2 after a retraction: {ids2} != {ids1}"
