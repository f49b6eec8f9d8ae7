"""What the ``ascend`` backend hands torch_npu: operators, order, shapes, dtypes, layouts.

Runs against the fake operators (``pdcore_ascend.testing.fake_torch_npu``), which
record each call and reject inputs the NPU kernels would reject.
"""

from __future__ import annotations

import pytest
import torch
from pdcore_ascend.attention import AscendAttention, causal_mask

from pdcore.attention.base import AttentionConfig
from pdcore.testing.attention_suite import make_case, reference

BF16 = torch.bfloat16


def case(seq_lens, extend_lens, heads=8, kv_heads=2, dim=64, page_size=16, dtype=BF16):
    return make_case(
        seq_lens=seq_lens,
        extend_lens=extend_lens,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=dim,
        page_size=page_size,
        dtype=dtype,
        device=torch.device("cpu"),
    )


def run(c):
    impl = AscendAttention(c.cfg)
    impl.plan(c.meta)
    return impl.forward(c.q, c.k, c.v, c.k_cache, c.v_cache)


def op_names(npu_ops) -> list[str]:
    return [call.op for call in npu_ops.calls]


def test_extend_writes_the_cache_then_runs_fused_infer_attention(npu_ops):
    c = case([40, 23], [8, 23])  # a request with a 32-token cached prefix, one without
    run(c)
    assert op_names(npu_ops) == ["_npu_reshape_and_cache", "npu_fused_infer_attention_score"]
    fia = npu_ops.calls[1].args
    assert (fia["input_layout"], fia["sparse_mode"], fia["block_size"]) == ("TND", 3, 16)
    assert (fia["num_heads"], fia["num_key_value_heads"]) == (8, 2)
    assert fia["actual_seq_lengths"] == [8, 31], "TND query lengths are cumulative"
    assert fia["actual_seq_lengths_kv"] == [40, 23], "key lengths include the cached prefix"
    assert fia["scale"] == pytest.approx(64**-0.5)
    assert fia["atten_mask"] is causal_mask("cpu"), "one shared 2048x2048 mask"


def test_fused_attention_reads_the_pool_pages_in_place(npu_ops):
    """FIA gets the NHD pages viewed as [pages, page_size, kv_heads*dim]: no copy."""
    c = case([40, 23], [8, 23])
    run(c)
    fia = npu_ops.calls[1].args
    pages = c.k_cache.shape[0]
    assert tuple(fia["key"].shape) == (pages, 16, 2 * 64)
    assert fia["key"].data_ptr() == c.k_cache.data_ptr()
    assert fia["value"].data_ptr() == c.v_cache.data_ptr()
    assert fia["block_table"].dtype == torch.int32
    assert torch.equal(fia["block_table"].long(), c.meta.page_table)


def test_decode_writes_the_cache_then_runs_paged_attention(npu_ops):
    c = case([1, 9, 17, 70], [1, 1, 1, 1])
    out = run(c)
    assert op_names(npu_ops) == ["_npu_reshape_and_cache", "_npu_paged_attention"]
    pa = npu_ops.calls[1].args
    assert (pa["num_heads"], pa["num_kv_heads"]) == (8, 2)
    assert tuple(pa["query"].shape) == (4, 8, 64) and pa["query"].dtype == BF16
    assert pa["key_cache"] is c.k_cache and pa["value_cache"] is c.v_cache
    assert pa["block_table"].dtype == torch.int32
    assert pa["context_lens"].dtype == torch.int32
    assert pa["context_lens"].device.type == "cpu", "the kernel reads context_lens on the host"
    assert pa["context_lens"].tolist() == [1, 9, 17, 70]
    assert pa["out"] is out


def test_slot_indices_are_page_times_page_size_plus_offset(npu_ops):
    """Token p of a request lands in page ``page_table[p // 16]`` at offset ``p % 16``."""
    c = case([40], [8])  # new tokens at positions 32..39: the request's third page
    run(c)
    write = npu_ops.calls[0].args
    assert write["slot_indices"].dtype == torch.int32
    third_page = int(c.meta.page_table[0, 2])
    expected = [third_page * 16 + p % 16 for p in range(32, 40)]
    assert write["slot_indices"].tolist() == expected
    assert torch.equal(c.k_cache[third_page, :8], c.k), "new K rows at offsets 0..7"
    assert torch.equal(c.v_cache[third_page, :8], c.v)


def test_gqa_prefix_extend_matches_the_dense_reference(npu_ops):
    c = case([64, 37], [1 + 15, 11], heads=12, kv_heads=4, dim=128, page_size=128)
    out = run(c)
    torch.testing.assert_close(out.double(), reference(c), atol=3e-2, rtol=3e-2)


def test_non_contiguous_projections_are_made_dense_before_the_kernels(npu_ops):
    """The model passes views of its fused QKV output; FIA refuses non-contiguous input."""
    c = case([9, 16], [9, 16], heads=4, kv_heads=4, dim=32)
    qkv = torch.cat([c.q, c.k, c.v], dim=1)  # [T, 12, 32]: q, k, v are strided views of it
    q, k, v = qkv.split([4, 4, 4], dim=1)
    assert not v.is_contiguous()
    impl = AscendAttention(c.cfg)
    impl.plan(c.meta)
    out = impl.forward(q, k, v, c.k_cache, c.v_cache)
    torch.testing.assert_close(out.double(), reference(c), atol=3e-2, rtol=3e-2)


def test_one_impl_serves_extend_then_decode(npu_ops):
    """plan() per pass switches between the two attention operators."""
    impl = None
    for c in (case([20], [20]), case([21], [1])):
        impl = impl or AscendAttention(c.cfg)
        impl.plan(c.meta)
        impl.forward(c.q, c.k, c.v, c.k_cache, c.v_cache)
    assert op_names(npu_ops) == [
        "_npu_reshape_and_cache",
        "npu_fused_infer_attention_score",
        "_npu_reshape_and_cache",
        "_npu_paged_attention",
    ]


# ---- what the kernels do not take ---------------------------------------------------


def config(dtype=BF16, page_size=16, head_dim=64) -> AttentionConfig:
    return AttentionConfig(8, 2, head_dim, page_size, dtype, torch.device("cpu"))


def test_float32_is_refused_with_the_flag_to_pass(npu_ops):
    with pytest.raises(ValueError, match=r"float16 or bfloat16.*--dtype bfloat16"):
        AscendAttention(config(dtype=torch.float32))


def test_page_size_must_be_a_multiple_of_16(npu_ops):
    with pytest.raises(ValueError, match="page size 8 is not a multiple of 16"):
        AscendAttention(config(page_size=8))


def test_page_times_head_dim_is_limited_to_128_by_128(npu_ops):
    with pytest.raises(ValueError, match=r"exceeds 128 x 128; use --page-size 64"):
        AscendAttention(config(page_size=128, head_dim=256))


def test_forward_before_plan_is_an_error(npu_ops):
    c = case([5], [5])
    with pytest.raises(RuntimeError, match="plan"):
        AscendAttention(c.cfg).forward(c.q, c.k, c.v, c.k_cache, c.v_cache)
