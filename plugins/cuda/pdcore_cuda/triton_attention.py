"""The ``triton`` attention backend: pdcore's own paged kernels (see ``triton_kernels``).

The fallback on CUDA when FlashInfer is absent. ``plan`` does the per-batch
host work once (row starts, grid, decode split count) so the 30-odd layers of a
forward pass only launch kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pdcore.attention.base import AttentionConfig, AttentionImpl, store_kv
from pdcore_cuda.triton_kernels import _merge_kernel, _paged_attention_kernel


@triton.jit
def _store_kv_kernel(
    K, V, KC, VC, Slots, stride_kt, stride_kh, stride_vt, stride_vh, heads,
    D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Token ``t``'s K and V rows into cache slot ``Slots[t]`` (contiguous caches)."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Slots + t).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < heads) & (d < D)
    row = slot * heads * D + h * D + d
    tl.store(KC + row, tl.load(K + t * stride_kt + h * stride_kh + d, mask=mask), mask=mask)
    tl.store(VC + row, tl.load(V + t * stride_vt + h * stride_vh + d, mask=mask), mask=mask)


def store_kv_fused(k, v, k_cache, v_cache, cache_slots) -> None:
    """``store_kv`` in one launch for K and V (two index_put kernels otherwise)."""
    if (
        not (k_cache.is_contiguous() and v_cache.is_contiguous())
        or k.stride(-1) != 1
        or (v.stride(-1) != 1)
    ):
        return store_kv(k, v, k_cache, v_cache, cache_slots)
    tokens, heads, dim = k.shape
    if tokens == 0:
        return None
    _store_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, cache_slots, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        heads, D=dim, BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(dim),
    )  # fmt: skip
    return None


MAX_SPLITS = 16
KEYS_PER_SPLIT = 256  # below this many keys per program, splitting does not pay


class TritonAttention(AttentionImpl):
    cuda_graph_safe = True  # kernel loop bounds come from device seq_lens

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        self.group = config.num_heads // config.num_kv_heads
        self.block_d = triton.next_power_of_2(config.head_dim)
        self._sm_count = None

    def plan(self, meta) -> None:
        super().plan(meta)
        ext = meta.extend_lens
        self.q_start = torch.cumsum(ext, 0) - ext
        ieee = self.config.dtype == torch.float32
        if meta.is_decode:
            block_m = 16
        else:
            block_m = 32 if ieee or self.block_d > 128 else 64
        self.block_m = max(block_m, triton.next_power_of_2(self.group) if meta.is_decode else 0)
        self.block_n = 32 if ieee else 64
        max_rows = max(meta.extend_lens_cpu) * self.group
        self.grid_m = triton.cdiv(max_rows, self.block_m)
        self.splits = self._splits(meta) if meta.is_decode else 1

    def _splits(self, meta) -> int:
        """Flash-decoding split count: fill the GPU when batch x KV heads is small."""
        if self._sm_count is None:
            props = torch.cuda.get_device_properties(meta.seq_lens.device)
            self._sm_count = props.multi_processor_count
        programs = meta.batch_size * self.config.num_kv_heads * self.grid_m
        by_length = max(1, max(meta.seq_lens_cpu) // KEYS_PER_SPLIT)
        want = min(MAX_SPLITS, by_length, triton.cdiv(2 * self._sm_count, programs))
        return 1 << (max(1, want).bit_length() - 1)  # a power of two (the merge needs it)

    def forward(self, q, k, v, k_cache, v_cache):
        meta = self.meta
        if meta is None:
            raise RuntimeError("plan() must be called before forward()")
        store_kv_fused(k, v, k_cache, v_cache, meta.cache_slots)
        cfg = self.config
        out = torch.empty_like(q)
        kf = k_cache.view(-1, *k_cache.shape[2:])  # [slots, KVH, D]
        vf = v_cache.view(-1, *v_cache.shape[2:])
        splits = self.splits
        if splits > 1:
            partial_lse = torch.empty(
                q.shape[0], cfg.num_heads, splits, device=q.device, dtype=torch.float32
            )
            partial_o = torch.empty(
                *partial_lse.shape, cfg.head_dim, device=q.device, dtype=torch.float32
            )
        else:
            partial_lse = partial_o = out  # unused
        ps_strides = partial_lse.stride() if splits > 1 else (0, 0, 0)
        grid = (meta.batch_size, cfg.num_kv_heads, self.grid_m * splits)
        _paged_attention_kernel[grid](
            q,
            kf,
            vf,
            out,
            partial_o,
            partial_lse,
            meta.page_table,
            meta.seq_lens,
            meta.extend_lens,
            self.q_start,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            kf.stride(0),
            kf.stride(1),
            vf.stride(0),
            vf.stride(1),
            meta.page_table.stride(0),
            *ps_strides,
            cfg.softmax_scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
            GROUP=self.group,
            PAGE=cfg.page_size,
            HEAD_DIM=cfg.head_dim,
            BLOCK_D=self.block_d,
            BLOCK_M=self.block_m,
            BLOCK_N=self.block_n,
            NUM_SPLITS=splits,
            IEEE=q.dtype == torch.float32,
        )
        if splits > 1:
            _merge_kernel[(q.shape[0], cfg.num_heads)](
                partial_o,
                partial_lse,
                out,
                out.stride(0),
                out.stride(1),
                *ps_strides,
                HEAD_DIM=cfg.head_dim,
                BLOCK_D=self.block_d,
                NUM_SPLITS=splits,
            )
        return out
