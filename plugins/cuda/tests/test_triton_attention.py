"""Triton paged attention vs a float64 dense reference beyond the kit's small cases:
long decode contexts (split decoding), GQA ratios 1-16, head dims 64/128, page sizes."""

from __future__ import annotations

import random

import pytest
import torch

from pdcore.testing.attention_suite import make_case, reference

pytestmark = pytest.mark.gpu

SHAPES = [(32, 8, 128), (16, 1, 64), (12, 4, 64), (8, 8, 128)]  # heads, kv heads, dim


def run(shape, seq_lens, ext_lens, page_size, dtype=torch.bfloat16, seed=0):
    from pdcore_cuda.triton_attention import TritonAttention

    heads, kv_heads, dim = shape
    case = make_case(
        seq_lens=seq_lens,
        extend_lens=ext_lens,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=dim,
        page_size=page_size,
        dtype=dtype,
        device=torch.device("cuda"),
        seed=seed,
    )
    impl = TritonAttention(case.cfg)
    impl.plan(case.meta)
    out = impl.forward(case.q, case.k, case.v, case.k_cache, case.v_cache)
    ref = reference(case)
    err = (out.double().cpu() - ref).norm() / ref.norm()
    return impl, float(err)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_long_context_decode_splits_and_matches(shape, batch):
    rng = random.Random(batch)
    seq_lens = [rng.randint(1500, 4100) for _ in range(batch)]
    impl, err = run(shape, seq_lens, [1] * batch, page_size=16)
    assert impl.splits > 1, "long contexts at small batch should use split decoding"
    assert err <= 1e-2, f"relative error {err:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_prefill_with_varied_prefixes_matches(shape, page_size):
    rng = random.Random(page_size)
    ext = [rng.randint(1, 300) for _ in range(4)]
    seq = [e + rng.choice([0, 1, 17, 500]) for e in ext]
    _, err = run(shape, seq, ext, page_size=page_size, seed=page_size)
    assert err <= 1e-2, f"relative error {err:.2e}"


def test_mixed_short_decode_batch_matches():
    seq = [1, 2, 15, 16, 17, 63, 64, 65, 300]
    _, err = run((32, 8, 128), seq, [1] * len(seq), page_size=16)
    assert err <= 1e-2, f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kv_heads,dim", [(8, 128), (1, 64), (3, 96)])
def test_fused_kv_store_writes_exactly_what_store_kv_writes(dtype, kv_heads, dim):
    from pdcore_cuda.triton_attention import store_kv_fused

    from pdcore.attention.base import store_kv

    tokens, pages, page_size = 37, 20, 16
    qkv = torch.randn(tokens, (4 + 2 * kv_heads) * dim, device="cuda").to(dtype)
    k = qkv[:, 4 * dim : (4 + kv_heads) * dim].view(tokens, kv_heads, dim)  # strided views
    v = qkv[:, (4 + kv_heads) * dim :].view(tokens, kv_heads, dim)
    slots = torch.randperm(pages * page_size, device="cuda")[:tokens]
    caches = [
        torch.zeros(pages, page_size, kv_heads, dim, device="cuda", dtype=dtype) for _ in range(4)
    ]
    store_kv(k, v, caches[0], caches[1], slots)
    store_kv_fused(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[2], caches[0]), "K cache differs from store_kv's"
    assert torch.equal(caches[3], caches[1]), "V cache differs from store_kv's"
