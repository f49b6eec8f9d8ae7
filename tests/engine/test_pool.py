"""KV pool sizing and the buffers handed to transfer engines."""

from __future__ import annotations

import pytest
import torch

from pdcore.kvcache.pool import KVPool, KVShape, pages_for_budget

SHAPE = KVShape(num_layers=3, num_kv_heads=2, head_dim=8, page_size=4, dtype=torch.float16)


def test_bytes_per_page_covers_k_and_v_of_every_layer():
    assert SHAPE.bytes_per_page == 2 * 3 * 4 * 2 * 8 * 2


def test_budget_from_tokens_rounds_up_to_pages():
    kw = dict(mem_fraction_static=None, free_bytes=None)
    assert pages_for_budget(SHAPE, max_total_tokens=17, **kw) == 5
    assert pages_for_budget(SHAPE, max_total_tokens=16, **kw) == 4


def test_budget_from_free_memory():
    free = 1000 * SHAPE.bytes_per_page
    got = pages_for_budget(
        SHAPE, max_total_tokens=None, mem_fraction_static=0.5, free_bytes=free, device_type="cuda"
    )
    assert got == 500 - 1, "the padding page comes out of the budget"
    default_cpu = pages_for_budget(
        SHAPE, max_total_tokens=None, mem_fraction_static=None, free_bytes=free
    )
    assert default_cpu == 100 - 1
    with pytest.raises(MemoryError, match="mem-fraction-static"):
        pages_for_budget(SHAPE, max_total_tokens=None, mem_fraction_static=0.5, free_bytes=100)


def test_pool_tensors_buffers_and_padding_page():
    pool = KVPool(SHAPE, num_usable_pages=10)
    assert pool.num_pages == 11 and pool.max_total_tokens == 40
    assert pool.allocator.capacity == 10
    k, v = pool.layer_caches[0]
    assert k.shape == (11, 4, 2, 8) and k.dtype == torch.float16
    bufs = pool.buffers()
    assert len(bufs) == 2 * 3
    assert len({ptr for ptr, _ in bufs}) == 6
    assert all(n == 11 * SHAPE.bytes_per_page // 6 for _, n in bufs)
    assert bufs[0] == (k.data_ptr(), k.numel() * 2) and bufs[1][0] == v.data_ptr()
    assert not k[0].any() and not v[0].any(), "the padding page is zero"
    assert 0 not in pool.allocator.alloc(10)
