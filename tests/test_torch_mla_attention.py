"""The built-in ``torch_mla`` backend against a dense latent-attention reference.

Requests sit on shuffled pages of one latent tensor per layer ``[pages, page,
1, R + P]`` (the pool's MLA layout), split into the latent and rope-key views
the backend gets. score(i, j) = (q_latent_i . c_j + q_rope_i . r_j) * scale,
causal from the bottom right; the output is softmax(scores) @ c.
"""

from __future__ import annotations

import pytest
import torch

from pdcore.attention.base import AttentionConfig, AttentionMetadata
from pdcore.attention.torch_mla import TorchMLAAttention
from pdcore.registry import get_registry

HEADS, RANK, ROPE, PAGE = 4, 32, 8, 4
SCALE = 0.15
F64 = torch.float64


def build(seq_lens, extend_lens, seed=0):
    """Metadata, forward inputs, the latent tensor and each request's (c, r) rows."""
    gen = torch.Generator().manual_seed(seed)
    pages_per = [-(-s // PAGE) for s in seq_lens]
    total = sum(pages_per) + 1
    perm = torch.randperm(total - 1, generator=gen) + 1  # page 0 is the padding page
    latent = torch.zeros(total, PAGE, 1, RANK + ROPE, dtype=F64)
    table = torch.zeros(len(seq_lens), max(pages_per), dtype=torch.int64)
    rows, slots, qs, new_c, new_r = [], [], [], [], []
    used = 0
    for i, (seq, ext) in enumerate(zip(seq_lens, extend_lens, strict=True)):
        pages = perm[used : used + pages_per[i]]
        used += pages_per[i]
        table[i, : len(pages)] = pages
        c = torch.randn(seq, 1, RANK, generator=gen, dtype=F64)
        r = torch.randn(seq, 1, ROPE, generator=gen, dtype=F64)
        flat = pages[torch.arange(seq) // PAGE] * PAGE + torch.arange(seq) % PAGE
        prefix = seq - ext
        latent.view(-1, 1, RANK + ROPE)[flat[:prefix]] = torch.cat((c, r), -1)[:prefix]
        slots.append(flat[prefix:])
        new_c.append(c[prefix:])
        new_r.append(r[prefix:])
        qs.append(torch.randn(ext, HEADS, RANK + ROPE, generator=gen, dtype=F64))
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
    caches = (latent[..., :RANK], latent[..., RANK:])
    return meta, (torch.cat(qs), torch.cat(new_c), torch.cat(new_r), *caches), latent, rows


def dense_reference(q, rows, extend_lens) -> torch.Tensor:
    outs, start = [], 0
    for (c, r), ext in zip(rows, extend_lens, strict=True):
        seq = c.shape[0]
        qr = q[start : start + ext]
        scores = (qr[..., :RANK] @ c[:, 0].T + qr[..., RANK:] @ r[:, 0].T) * SCALE
        future = torch.arange(seq)[None, :] > torch.arange(seq - ext, seq)[:, None]
        scores = scores.masked_fill(future[:, None, :], float("-inf"))
        outs.append(torch.softmax(scores, -1) @ c[:, 0])
        start += ext
    return torch.cat(outs)


def mla(kv_heads=1) -> TorchMLAAttention:
    return TorchMLAAttention(AttentionConfig(HEADS, kv_heads, RANK + ROPE, PAGE, F64, None, SCALE))


@pytest.mark.parametrize(
    ("seq_lens", "extend_lens"),
    [([5, 13], [5, 13]), ([10, 7, 9], [3, 7, 1]), ([1, 6, 17], [1, 1, 1])],
    ids=["prefill", "prefill-with-prefix", "decode"],
)
def test_matches_dense_latent_attention(seq_lens, extend_lens):
    meta, (q, c, r, k_cache, v_cache), latent, rows = build(seq_lens, extend_lens)
    impl = mla()
    impl.plan(meta)
    out = impl.forward(q, c, r, k_cache, v_cache)
    assert out.shape == (q.shape[0], HEADS, RANK), "the output stays in the latent space"
    torch.testing.assert_close(out, dense_reference(q, rows, extend_lens), atol=1e-10, rtol=1e-10)
    # The new tokens' latent and rope key landed side by side in the one tensor.
    stored = latent.view(-1, RANK + ROPE)[meta.cache_slots]
    assert torch.equal(stored, torch.cat((c, r), -1)[:, 0])


def test_more_than_one_latent_head_is_refused():
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        mla(kv_heads=2)


def test_query_width_must_be_rank_plus_rope():
    meta, (q, c, r, k_cache, v_cache), _, _ = build([5], [5])
    impl = mla()
    impl.plan(meta)
    with pytest.raises(ValueError, match=r"query dim 36 != latent rank 32 \+ rope dim 8"):
        impl.forward(q[..., :36], c, r, k_cache, v_cache)


def test_registered_as_the_builtin_mla_backend():
    reg = get_registry()
    cpu = reg.select_platform("cpu")
    spec = reg.select_attention(None, cpu, kind="mla")
    assert (spec.name, spec.kv_layout.kind) == ("torch_mla", "mla")
    assert reg.select_attention(None, cpu).name == "torch"  # no model known: an MHA backend
    assert reg.select_attention("torch_mla", cpu).name == "torch_mla"  # nothing to check yet
