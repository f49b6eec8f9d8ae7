"""The fake torch_npu refuses what the NPU kernels refuse, so contract tests can fail.

Each case makes one valid call invalid in one way and expects ``FakeOpError``
naming the problem; the valid calls themselves are exercised by the backend tests.
"""

from __future__ import annotations

import pytest
import torch
from pdcore_ascend.testing.fake_torch_npu import MASK_SIZE, FakeOpError, make_module

BF16 = torch.bfloat16
PAGES, PAGE, KV_HEADS, HEADS, DIM = 4, 16, 2, 8, 32


@pytest.fixture
def ops():
    return make_module()


def caches(dtype=BF16, page=PAGE):
    shape = (PAGES, page, KV_HEADS, DIM)
    return torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)


def write_args(**change):
    k_cache, v_cache = caches()
    args = dict(
        key=torch.randn(3, KV_HEADS, DIM).to(BF16),
        value=torch.randn(3, KV_HEADS, DIM).to(BF16),
        key_cache=k_cache,
        value_cache=v_cache,
        slot_indices=torch.tensor([0, 17, 63], dtype=torch.int32),
    )
    return {**args, **change}


def paged_args(**change):
    k_cache, v_cache = caches()
    query = torch.randn(2, HEADS, DIM).to(BF16)
    args = dict(
        query=query,
        key_cache=k_cache,
        value_cache=v_cache,
        num_kv_heads=KV_HEADS,
        num_heads=HEADS,
        scale_value=DIM**-0.5,
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
        context_lens=torch.tensor([20, 32], dtype=torch.int32),
        out=torch.empty_like(query),
    )
    return {**args, **change}


def fia_args(**change):
    k_cache, v_cache = caches()
    args = dict(
        query=torch.randn(5, HEADS, DIM).to(BF16),
        key=k_cache.view(PAGES, PAGE, -1),
        value=v_cache.view(PAGES, PAGE, -1),
        atten_mask=torch.ones(MASK_SIZE, MASK_SIZE, dtype=torch.bool).triu(1),
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
        input_layout="TND",
        block_size=PAGE,
        actual_seq_lengths=[2, 5],
        actual_seq_lengths_kv=[20, 3],
        num_key_value_heads=KV_HEADS,
        num_heads=HEADS,
        scale=DIM**-0.5,
        sparse_mode=3,
    )
    return {**args, **change}


def test_valid_calls_pass_and_are_recorded(ops):
    ops._npu_reshape_and_cache(**write_args())
    ops._npu_paged_attention(**paged_args())
    out, _ = ops.npu_fused_infer_attention_score(**fia_args())
    assert out.shape == (5, HEADS, DIM)
    assert [c.op for c in ops.calls] == [
        "_npu_reshape_and_cache",
        "_npu_paged_attention",
        "npu_fused_infer_attention_score",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"slot_indices": torch.tensor([0, 17, 63])}, "slot_indices must be int32"),
        ({"slot_indices": torch.tensor([0, 17, 64], dtype=torch.int32)}, "outside 0..63"),
        ({"key": torch.randn(3, KV_HEADS, DIM)}, "need one of float16, bfloat16, int8"),
        ({"value": torch.randn(3, KV_HEADS + 1, DIM).to(BF16)}, "does not fit value_cache"),
    ],
    ids=["int64-slots", "slot-out-of-range", "float32-key", "head-mismatch"],
)
def test_reshape_and_cache_refuses(ops, change, message):
    with pytest.raises(FakeOpError, match=message):
        ops._npu_reshape_and_cache(**write_args(**change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"block_table": torch.tensor([[0, 1], [2, 3]])}, "block_table must be int32"),
        ({"context_lens": torch.tensor([20, 32])}, "context_lens must be int32"),
        ({"context_lens": torch.tensor([20, 33], dtype=torch.int32)}, r"outside 1\.\.32"),
        ({"num_kv_heads": 3}, "not a multiple of num_kv_heads 3"),
        ({"query": torch.randn(2, HEADS, DIM)}, "need float16 or bfloat16"),
        ({"block_table": torch.tensor([[0, 4], [2, 3]], dtype=torch.int32)}, r"in 0\.\.3"),
    ],
    ids=["int64-table", "int64-lens", "beyond-table", "heads", "float32", "bad-block-id"],
)
def test_paged_attention_refuses(ops, change, message):
    with pytest.raises(FakeOpError, match=message):
        ops._npu_paged_attention(**paged_args(**change))


def test_paged_attention_refuses_a_page_size_not_multiple_of_16(ops):
    k_cache, v_cache = caches(page=8)
    with pytest.raises(FakeOpError, match="block_size 8 is not a multiple of 16"):
        ops._npu_paged_attention(**paged_args(key_cache=k_cache, value_cache=v_cache))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actual_seq_lengths": [2, 3]}, "cumulative ending at 5"),
        ({"actual_seq_lengths": (2, 5.0)}, "must be a list of ints"),
        ({"actual_seq_lengths_kv": [20, 2]}, "at least as many keys as queries"),
        ({"atten_mask": torch.ones(MASK_SIZE, MASK_SIZE, dtype=torch.bool).tril()}, "upper"),
        ({"atten_mask": None}, r"compressed bool mask \[2048, 2048\]"),
        ({"input_layout": "BSND"}, "TND layout over a block table"),
        ({"block_size": 32}, "block size 16 != block_size 32"),
        ({"sparse_mode": 2}, "sparse_mode 0 and 3"),
        ({"pse_shift": torch.zeros(1)}, r"does not model \['pse_shift'\]"),
    ],
    ids=[
        "not-cumulative",
        "float-length",
        "fewer-keys",
        "lower-mask",
        "no-mask",
        "layout",
        "block-size",
        "sparse-mode",
        "unmodelled-arg",
    ],
)
def test_fused_infer_attention_refuses(ops, change, message):
    with pytest.raises(FakeOpError, match=message):
        ops.npu_fused_infer_attention_score(**fia_args(**change))


def test_fused_infer_attention_refuses_a_non_contiguous_query(ops):
    query = torch.randn(HEADS, 5, DIM).to(BF16).transpose(0, 1)
    with pytest.raises(FakeOpError, match="query must be contiguous"):
        ops.npu_fused_infer_attention_score(**fia_args(query=query))
