"""The ``ascend-mla`` backend against a dense latent-attention reference, with the fake
torch_npu operators, and against the core's ``torch_mla`` backend (same seam).

Absorbed MLA: score(i, j) = (q_nope_i . c_j + q_rope_i . r_j) * scale over the
latent rows c (rank R) and rotary keys r (P dims) of one request; the output is
softmax(scores) @ c, causal from the bottom right.
"""

from __future__ import annotations

import pytest
import torch
from pdcore_ascend.mla_attention import AscendMLAAttention

from pdcore.attention.base import AttentionConfig, AttentionMetadata
from pdcore.attention.torch_mla import TorchMLAAttention

BF16 = torch.bfloat16
HEADS, RANK, ROPE, PAGE = 16, 64, 16, 16
SCALE = 0.1


def build(seq_lens, extend_lens, seed=0):
    """Requests over shuffled pages with their prefix already in the latent cache."""
    gen = torch.Generator().manual_seed(seed)
    pages_per = [-(-s // PAGE) for s in seq_lens]
    total = sum(pages_per) + 2
    perm = torch.randperm(total, generator=gen)
    latent_cache = torch.randn(total, PAGE, 1, RANK, generator=gen).to(BF16)
    rope_cache = torch.randn(total, PAGE, 1, ROPE, generator=gen).to(BF16)
    table = torch.zeros(len(seq_lens), max(pages_per), dtype=torch.int64)
    rows, slots, qs, new_c, new_r = [], [], [], [], []
    used = 0
    for i, (seq, ext) in enumerate(zip(seq_lens, extend_lens, strict=True)):
        pages = perm[used : used + pages_per[i]]
        used += pages_per[i]
        table[i, : len(pages)] = pages
        c = torch.randn(seq, 1, RANK, generator=gen).to(BF16)
        r = torch.randn(seq, 1, ROPE, generator=gen).to(BF16)
        flat = pages[torch.arange(seq) // PAGE] * PAGE + torch.arange(seq) % PAGE
        prefix = seq - ext
        latent_cache.view(-1, 1, RANK)[flat[:prefix]] = c[:prefix]
        rope_cache.view(-1, 1, ROPE)[flat[:prefix]] = r[:prefix]
        slots.append(flat[prefix:])
        new_c.append(c[prefix:])
        new_r.append(r[prefix:])
        qs.append(torch.randn(ext, HEADS, RANK + ROPE, generator=gen).to(BF16))
        rows.append((c, r))
    meta = AttentionMetadata(
        is_decode=all(e == 1 for e in extend_lens),
        page_table=table,
        seq_lens=torch.tensor(seq_lens),
        extend_lens=torch.tensor(extend_lens),
        cache_slots=torch.cat(slots),
        seq_lens_cpu=list(seq_lens),
        extend_lens_cpu=list(extend_lens),
    )
    inputs = (torch.cat(qs), torch.cat(new_c), torch.cat(new_r), latent_cache, rope_cache)
    return meta, inputs, rows


def dense_reference(q, rows, extend_lens) -> torch.Tensor:
    outs, start = [], 0
    for (c, r), ext in zip(rows, extend_lens, strict=True):
        seq = c.shape[0]
        qr = q[start : start + ext].double()
        cd, rd = c[:, 0].double(), r[:, 0].double()
        scores = (qr[..., :RANK] @ cd.T + qr[..., RANK:] @ rd.T) * SCALE  # [ext, H, seq]
        q_pos = torch.arange(seq - ext, seq)
        future = torch.arange(seq)[None, :] > q_pos[:, None]  # [ext, seq]
        scores = scores.masked_fill(future[:, None, :], float("-inf"))
        outs.append(torch.softmax(scores, -1) @ cd)
        start += ext
    return torch.cat(outs)


def mla(config_heads=HEADS, kv_heads=1, dtype=BF16) -> AscendMLAAttention:
    cfg = AttentionConfig(config_heads, kv_heads, RANK + ROPE, PAGE, dtype, None, SCALE)
    return AscendMLAAttention(cfg)


@pytest.mark.parametrize(
    ("seq_lens", "extend_lens"),
    [([5, 33], [5, 33]), ([40, 23], [8, 23]), ([1, 17, 70], [1, 1, 1])],
    ids=["prefill", "prefill-with-prefix", "decode"],
)
def test_matches_dense_latent_attention(npu_ops, seq_lens, extend_lens):
    meta, (q, c, r, latent_cache, rope_cache), rows = build(seq_lens, extend_lens)
    impl = mla()
    impl.plan(meta)
    out = impl.forward(q, c, r, latent_cache, rope_cache)
    assert out.shape == (q.shape[0], HEADS, RANK), "the output stays in the latent space"
    torch.testing.assert_close(
        out.double(), dense_reference(q, rows, extend_lens), atol=3e-2, rtol=3e-2
    )


def test_writes_latent_and_rope_then_one_fused_call(npu_ops):
    meta, (q, c, r, latent_cache, rope_cache), _ = build([40], [8])
    impl = mla()
    impl.plan(meta)
    impl.forward(q, c, r, latent_cache, rope_cache)
    write, fia = npu_ops.calls
    assert (write.op, fia.op) == ("_npu_reshape_and_cache", "npu_fused_infer_attention_score")
    assert write.args["key_cache"] is latent_cache and write.args["value_cache"] is rope_cache
    assert torch.equal(latent_cache.view(-1, 1, RANK)[meta.cache_slots], c)
    assert torch.equal(rope_cache.view(-1, 1, ROPE)[meta.cache_slots], r)
    args = fia.args
    assert args["key"] is args["value"], "the latent is key and value"
    assert args["key"].data_ptr() == latent_cache.data_ptr(), "read in place"
    assert tuple(args["key"].shape) == (latent_cache.shape[0], 1, PAGE, RANK)
    assert tuple(args["query_rope"].shape) == (8, HEADS, ROPE)
    assert (args["num_key_value_heads"], args["sparse_mode"]) == (1, 3)


def test_more_than_one_latent_head_is_refused(npu_ops):
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        mla(kv_heads=2)


def test_query_width_must_be_rank_plus_rope(npu_ops):
    meta, (q, c, r, latent_cache, rope_cache), _ = build([5], [5])
    impl = mla()
    impl.plan(meta)
    with pytest.raises(ValueError, match=r"query dim 70 != latent rank 64 \+ rope dim 16"):
        impl.forward(q[..., :70], c, r, latent_cache, rope_cache)


@pytest.mark.parametrize(
    ("seq_lens", "extend_lens"),
    [([40, 23], [8, 23]), ([1, 17, 70], [1, 1, 1])],
    ids=["prefill-with-prefix", "decode"],
)
def test_same_seam_as_the_core_torch_mla_backend(npu_ops, seq_lens, extend_lens):
    """Same query, latent, rope key and caches in; same output and cache writes out:
    a model written against one MLA backend runs on the other."""
    meta, (q, c, r, latent_cache, rope_cache), _ = build(seq_lens, extend_lens)
    torch_caches = (latent_cache.clone(), rope_cache.clone())
    impl = mla()
    impl.plan(meta)
    want = impl.forward(q, c, r, latent_cache, rope_cache)
    core = TorchMLAAttention(AttentionConfig(HEADS, 1, RANK + ROPE, PAGE, BF16, None, SCALE))
    core.plan(meta)
    got = core.forward(q, c, r, *torch_caches)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    assert torch.equal(torch_caches[0], latent_cache) and torch.equal(torch_caches[1], rope_cache)
