"""pdcore's Triton kernel for paged attention: prefill with cached prefix, and decode.

One kernel serves both. A program owns one request and one KV head; its rows
are (new token, query head of that KV head's group) pairs, so every K/V page is
read once per group (GQA) and decode's single token still fills a tensor-core
tile with the group's heads. Keys are gathered page by page through the page
table (no contiguous copy) and combined with an online softmax in float32.

Decode with few programs (small batch, long context) splits the keys over
``num_splits`` programs per head ("flash decoding") and merges the partial
results with a second small kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _paged_attention_kernel(
    Q,
    K,
    V,
    Out,
    PartialO,
    PartialLse,
    PageTable,
    SeqLens,
    ExtLens,
    QStart,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kslot,
    stride_kh,
    stride_vslot,
    stride_vh,
    stride_pt,
    stride_ps_t,
    stride_ps_h,
    stride_ps_s,
    scale_log2,
    GROUP: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    pid = tl.program_id(2)
    mb = pid // NUM_SPLITS
    split = pid % NUM_SPLITS
    ext = tl.load(ExtLens + b)
    rows = ext * GROUP
    if mb * BLOCK_M >= rows:
        return
    seq = tl.load(SeqLens + b)
    prefix = seq - ext
    q0 = tl.load(QStart + b)

    offs_r = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = offs_r // GROUP
    head = kvh * GROUP + offs_r % GROUP
    r_mask = offs_r < rows
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_ptrs = Q + (q0 + tok).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh
    q = tl.load(q_ptrs + offs_d[None, :], mask=r_mask[:, None] & d_mask[None, :], other=0.0)
    q_pos = prefix + tok

    # Keys this program covers: causal end of its rows, cut into NUM_SPLITS ranges.
    last_tok = tl.minimum((mb * BLOCK_M + BLOCK_M - 1) // GROUP, ext - 1)
    end = prefix + last_tok + 1
    per_split = tl.cdiv(tl.cdiv(end, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(end, lo + per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        page = tl.load(PageTable + b * stride_pt + offs_n // PAGE, mask=n_mask, other=0)
        slot = page.to(tl.int64) * PAGE + offs_n % PAGE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(
            K + slot[:, None] * stride_kslot + kvh * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        # V's load goes out with K's: a decode program often runs one block, and
        # loading V after the softmax would add a second memory round trip.
        v = tl.load(
            V + slot[:, None] * stride_vslot + kvh * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale_log2
        allowed = (offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out_mask = r_mask[:, None] & d_mask[None, :]
    row_t = (q0 + tok).to(tl.int64)
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = Out + row_t[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=out_mask)
    else:
        # Unnormalised partial sums with their log2-sum-exp, merged by _merge_kernel.
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        base = row_t * stride_ps_t + head * stride_ps_h + split * stride_ps_s
        tl.store(PartialLse + base, lse, mask=r_mask)
        tl.store(PartialO + base[:, None] * HEAD_DIM + offs_d[None, :], out, mask=out_mask)


@triton.jit
def _merge_kernel(
    PartialO,
    PartialLse,
    Out,
    stride_ot,
    stride_oh,
    stride_ps_t,
    stride_ps_h,
    stride_ps_s,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    base = t * stride_ps_t + h * stride_ps_h + offs_s * stride_ps_s
    lse = tl.load(PartialLse + base)
    m = tl.max(lse, 0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - m))
    o = tl.load(PartialO + base[:, None] * HEAD_DIM + offs_d[None, :], mask=d_mask[None, :])
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    o_ptrs = Out + t * stride_ot + h * stride_oh + offs_d
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=d_mask)
