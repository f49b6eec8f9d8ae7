"""DP attention (real gloo ranks): DP groups that split the prompts generate what one
rank generates alone.

Each DP group runs attention on its own requests and KV pool; the MLP (dense or
MoE) runs over every group's tokens with weights split over all ranks. The
cases: two groups of one rank (attention unsplit, vocab unsplit), two groups of
two ranks (heads and vocab split inside a group, the MLP over four ranks, each
group's rows gathered twice and deduplicated), DeepSeek MLA + MoE, and a lone
request while the other group only idles (zero-token forwards).
"""

from __future__ import annotations

import pytest
from model.model_helpers import make_checkpoint
from parallel.dp_ranks import run_dp_group
from parallel.tp_ranks import run_group

pytestmark = pytest.mark.timeout(300)

# Different lengths per group: their token counts differ in every prefill chunk.
PROMPTS = [list(range(3, 40)), [5, 9, 11, 200, 7, 7, 1], list(range(100, 123)), [42, 17, 99]]


def _assert_equal(case: str, got, want) -> None:
    for i, ((ids, lp, inp), (ref_ids, ref_lp, ref_inp)) in enumerate(zip(got, want, strict=True)):
        assert ids == ref_ids, f"{case}: prompt {i}: {ids} != {ref_ids}"
        worst = max(abs(a - b) for a, b in zip(lp, ref_lp, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} logprobs differ by {worst:.2e}"
        assert len(inp) == len(ref_inp) > 0, f"{case}: prompt {i}: prompt logprobs missing"
        worst = max(abs(a - b) for a, b in zip(inp, ref_inp, strict=True))
        assert worst < 1e-4, f"{case}: prompt {i} prompt logprobs differ by {worst:.2e}"


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(folder, "qwen3", seed=3, num_key_value_heads=2)
    return str(folder), run_group(str(folder), 1, PROMPTS)


@pytest.mark.parametrize(("tp_size", "dp_size"), [(2, 2), (4, 2)], ids=["tp2 dp2", "tp4 dp2"])
def test_dp_groups_equal_one_rank(qwen3, tp_size, dp_size):
    folder, reference = qwen3
    split = [PROMPTS[0::2], PROMPTS[1::2]]  # group 0: prompts 0, 2; group 1: 1, 3
    (out0, meta0), (out1, meta1) = run_dp_group(folder, tp_size, dp_size, split)
    _assert_equal(f"dp group 0 of tp{tp_size}", out0, reference[0::2])
    _assert_equal(f"dp group 1 of tp{tp_size}", out1, reference[1::2])
    assert meta0["forwards"] == meta1["forwards"], "DP leaders must run every forward together"
    assert meta0["cached_pages"] > 0 and meta1["cached_pages"] > 0, "both pools served"


def test_lone_request_while_the_other_group_idles(qwen3):
    folder, reference = qwen3
    (out0, meta0), (out1, meta1) = run_dp_group(folder, 2, 2, [[], [PROMPTS[0]]])
    assert out0 == []
    _assert_equal("lone request on dp group 1", out1, reference[:1])
    assert meta0["idle"] == meta0["forwards"] == meta1["forwards"] > 0
    assert meta1["idle"] == 0 and meta0["cached_pages"] == 0


def test_deepseek_mla_moe_dp_groups_equal_one_rank(tmp_path):
    make_checkpoint(tmp_path, "deepseek_v2", seed=3)
    reference = run_group(str(tmp_path), 1, PROMPTS[:3])
    (out0, _), (out1, _) = run_dp_group(str(tmp_path), 2, 2, [PROMPTS[:1], PROMPTS[1:3]])
    _assert_equal("deepseek dp group 0", out0, reference[:1])
    _assert_equal("deepseek dp group 1", out1, reference[1:3])
