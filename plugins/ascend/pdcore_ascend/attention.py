"""The ``ascend`` attention backend (MHA/GQA) on torch_npu's fused operators.

Per layer and forward pass: ``_npu_reshape_and_cache`` stores the new K/V rows
at their slots, then decode runs ``_npu_paged_attention`` (one query per
request over its pages) and prefill/extend runs ``npu_fused_infer_attention_score``
in the TND layout over the block table with the right-down causal mask
(``sparse_mode=3``), which covers chunked prefill over a cached prefix. These
are the calls vllm-ascend and SGLang's Ascend backend make.

KV layout: the pool's NHD pages ``[pages, page_size, kv_heads, head_dim]`` are
what the write and paged-attention operators take; FIA reads the same memory
viewed as ``[pages, page_size, kv_heads * head_dim]``. Index tensors are int32;
the decode context lengths are a host tensor (the operator reads them on the
host). Never run on an NPU: checked against ``pdcore_ascend.testing``'s fakes.
"""

from __future__ import annotations

import itertools

import torch

from pdcore.attention.base import AttentionConfig, AttentionImpl, AttentionMetadata
from pdcore_ascend.npu_ops import torch_npu

DTYPES = (torch.float16, torch.bfloat16)
MASK_SIZE = 2048
RIGHT_DOWN_CAUSAL = 3
MAX_HEAD_DIM = 256  # PagedAttention's head_size limit
MAX_PAGE_TIMES_HEAD = 128 * 128  # PagedAttention: block_size * head_size <= 128 * 128
PAGE_MULTIPLE = 16

_masks: dict[torch.device, torch.Tensor] = {}


def causal_mask(device) -> torch.Tensor:
    """FIA's compressed causal mask for sparse_mode 3: 2048 x 2048, True above the diagonal.

    One per device, shared by every layer and pass.
    """
    device = torch.device(device)
    if device not in _masks:
        ones = torch.ones(MASK_SIZE, MASK_SIZE, dtype=torch.bool, device=device)
        _masks[device] = ones.triu(1)
    return _masks[device]


def check_dtype_and_page(config: AttentionConfig) -> None:
    """Refuse, with the reason, a dtype or page size the NPU kernels do not take."""
    if config.dtype not in DTYPES:
        raise ValueError(
            f"the Ascend attention kernels take float16 or bfloat16, not {config.dtype}; "
            "pass --dtype bfloat16 (or float16)"
        )
    if config.page_size % PAGE_MULTIPLE:
        raise ValueError(f"page size {config.page_size} is not a multiple of {PAGE_MULTIPLE}")


def check_paged_attention_limits(config: AttentionConfig) -> None:
    """PagedAttention's head-size and block-size limits (the decode kernel)."""
    head_dim = config.head_dim
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} is outside 1..{MAX_HEAD_DIM}")
    if config.page_size * head_dim > MAX_PAGE_TIMES_HEAD:
        raise ValueError(
            f"page size {config.page_size} x head_dim {head_dim} exceeds 128 x 128; "
            f"use --page-size {MAX_PAGE_TIMES_HEAD // head_dim} or less"
        )


class AscendAttention(AttentionImpl):
    """Reshape-and-cache, then paged attention (decode) or fused infer attention (extend)."""

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        check_dtype_and_page(config)
        check_paged_attention_limits(config)
        self.ops = torch_npu()

    def plan(self, meta: AttentionMetadata) -> None:
        super().plan(meta)
        self.slots = meta.cache_slots.to(torch.int32)
        self.block_table = meta.page_table.to(torch.int32)
        if meta.is_decode:
            self.context_lens = torch.tensor(meta.seq_lens_cpu, dtype=torch.int32)
        else:
            self.q_ends = list(itertools.accumulate(meta.extend_lens_cpu))
            self.kv_lens = list(meta.seq_lens_cpu)
            self.mask = causal_mask(meta.page_table.device)

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is None:
            raise RuntimeError("plan() must be called before forward()")
        # The model hands over views of its fused QKV projection; the kernels take
        # dense tensors (no-ops where they already are).
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        self.ops._npu_reshape_and_cache(
            key=k, value=v, key_cache=k_cache, value_cache=v_cache, slot_indices=self.slots
        )
        if self.meta.is_decode:
            return self._decode(q, k_cache, v_cache)
        return self._extend(q, k_cache, v_cache)

    def _decode(self, q, k_cache, v_cache):
        cfg = self.config
        out = torch.empty_like(q)
        self.ops._npu_paged_attention(
            query=q,
            key_cache=k_cache,
            value_cache=v_cache,
            num_kv_heads=cfg.num_kv_heads,
            num_heads=cfg.num_heads,
            scale_value=cfg.softmax_scale,
            block_table=self.block_table,
            context_lens=self.context_lens,
            out=out,
        )
        return out

    def _extend(self, q, k_cache, v_cache):
        cfg = self.config
        pages, page_size = k_cache.shape[:2]
        out, _ = self.ops.npu_fused_infer_attention_score(
            q,
            k_cache.view(pages, page_size, -1),
            v_cache.view(pages, page_size, -1),
            atten_mask=self.mask,
            block_table=self.block_table,
            input_layout="TND",
            block_size=page_size,
            actual_seq_lengths=self.q_ends,
            actual_seq_lengths_kv=self.kv_lens,
            num_key_value_heads=cfg.num_kv_heads,
            num_heads=cfg.num_heads,
            scale=cfg.softmax_scale,
            sparse_mode=RIGHT_DOWN_CAUSAL,
        )
        return out.view(q.shape)
