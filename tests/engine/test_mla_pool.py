"""The MLA KV pool: one latent tensor per layer, what attention and transfers see of it."""

from __future__ import annotations

import pytest
import torch

from pdcore.disaggregation.kv_args import KVArgs
from pdcore.kvcache.pool import KVPool, KVShape, pages_for_budget

RANK, ROPE = 32, 16
MLA = KVShape(
    num_layers=3, num_kv_heads=1, head_dim=RANK + ROPE, page_size=4, dtype=torch.float16,
    latent_rank=RANK,
)  # fmt: skip


def test_bytes_per_page_counts_one_latent_row_per_layer():
    assert MLA.is_mla and MLA.buffers_per_layer == 1
    assert MLA.bytes_per_page == 3 * 4 * (RANK + ROPE) * 2
    free = 100 * MLA.bytes_per_page
    kw = dict(max_total_tokens=None, mem_fraction_static=0.5, free_bytes=free)
    assert pages_for_budget(MLA, **kw) == 50 - 1


def test_one_buffer_per_layer_and_views_that_write_through():
    pool = KVPool(MLA, num_usable_pages=10)
    bufs = pool.buffers()
    assert len(bufs) == 3, "one region per layer"
    assert all(n == 11 * 4 * (RANK + ROPE) * 2 for _, n in bufs)
    for (ptr, _), (latent, rope) in zip(bufs, pool.layer_caches, strict=True):
        assert latent.shape == (11, 4, 1, RANK) and rope.shape == (11, 4, 1, ROPE)
        assert latent.data_ptr() == ptr and rope.data_ptr() == ptr + RANK * 2
    latent, rope = pool.layer_caches[1]
    latent.view(-1, 1, RANK)[torch.tensor([5])] = 1.0  # how store_kv writes a slot
    rope.view(-1, 1, ROPE)[torch.tensor([5])] = 2.0
    whole = pool._buffers[1].view(-1, RANK + ROPE)[5]
    assert torch.equal(whole, torch.cat((torch.ones(RANK), 2 * torch.ones(ROPE))).half())
    assert not pool._buffers[1][0].any(), "the padding page is zero"


def test_kv_args_describe_the_latent_pool():
    pool = KVPool(MLA, num_usable_pages=10)
    args = KVArgs.from_pool(pool, "m")
    assert args.layout.is_mla
    assert (args.layout.num_kv_heads, args.layout.head_dim, args.layout.num_layers) == (1, 48, 3)
    assert len(args.kv_buffers) == 3 and args.page_bytes == 4 * (RANK + ROPE) * 2


def test_mla_shape_must_be_one_head_with_a_rope_part():
    bad = KVShape(3, 2, RANK + ROPE, 4, torch.float16, latent_rank=RANK)
    with pytest.raises(ValueError, match="MLA cache needs 1 head"):
        KVPool(bad, 4)
