"""The ``flashinfer`` attention backend: FlashInfer's paged prefill and decode kernels.

``plan`` builds FlashInfer's CSR page table (indptr, page indices, last-page
lengths) once per forward pass and plans the matching wrapper; every layer then
only calls ``run``. The pool's native layout is FlashInfer's "NHD", so the
caches are passed as they are. New K/V rows are stored by pdcore first
(``store_kv``), so prefill attends over prefix and new tokens in the cache.
FlashInfer computes in float16/bfloat16 only.

Decode passes captured in CUDA graphs use a wrapper in FlashInfer's graph mode,
one per captured batch size, with fixed device buffers for the CSR table: the
captured kernels read both the table and the work split that ``plan`` computes
on the host, so ``plan_replay`` re-plans with each step's lengths before the
replay (as SGLang does). All wrappers share one float workspace per device:
passes run one at a time on one stream.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from pdcore.attention.base import AttentionConfig, AttentionImpl
from pdcore_cuda.flashinfer_options import SUPPORTED_HEAD_DIMS, use_tensor_cores
from pdcore_cuda.triton_attention import store_kv_fused

WORKSPACE_BYTES = 128 << 20
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


_WORKSPACES: dict[torch.device, torch.Tensor] = {}


def shared_workspace(device: torch.device) -> torch.Tensor:
    """FlashInfer's float workspace (split-KV partials), one per device."""
    device = torch.device(device)
    if device not in _WORKSPACES:
        _WORKSPACES[device] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _WORKSPACES[device]


class FlashInferAttention(AttentionImpl):
    cuda_graph_safe = True

    def __init__(self, config: AttentionConfig):
        if config.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"flashinfer computes in float16/bfloat16, not {config.dtype}; "
                "use --dtype bfloat16 or --attention-backend triton"
            )
        if config.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"flashinfer kernels take head_dim {SUPPORTED_HEAD_DIMS}, not {config.head_dim}; "
                "use --attention-backend triton"
            )
        super().__init__(config)
        import flashinfer

        self._flashinfer = flashinfer
        self._workspace = shared_workspace(config.device)
        self._tensor_cores = use_tensor_cores(config.num_heads, config.num_kv_heads)
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace, "NHD", use_tensor_cores=self._tensor_cores
        )
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        self._wrapper = None
        self._graph = None  # the graph-mode decode wrapper, after plan_capture

    def _common(self) -> dict:
        cfg = self.config
        return dict(sm_scale=cfg.softmax_scale, q_data_type=cfg.dtype, kv_data_type=cfg.dtype)

    def plan(self, meta) -> None:
        super().plan(meta)
        cfg = self.config
        ps = cfg.page_size
        pages = [-(-s // ps) for s in meta.seq_lens_cpu]
        kv_indptr = torch.zeros(len(pages) + 1, dtype=torch.int32)
        kv_indptr[1:] = torch.tensor(pages, dtype=torch.int32).cumsum(0)
        tails = [s - (n - 1) * ps for s, n in zip(meta.seq_lens_cpu, pages, strict=True)]
        last = torch.tensor(tails, dtype=torch.int32)
        width = meta.page_table.shape[1]
        used = torch.arange(width)[None, :] < torch.tensor(pages)[:, None]
        indices = meta.page_table[used.to(meta.page_table.device)].to(torch.int32)
        common = self._common()
        if meta.is_decode:
            self._decode.plan(
                kv_indptr.to(cfg.device), indices, last.to(cfg.device),
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, ps, **common,
            )  # fmt: skip
            self._wrapper = self._decode
        else:
            qo_indptr = torch.zeros(len(pages) + 1, dtype=torch.int32)
            qo_indptr[1:] = torch.tensor(meta.extend_lens_cpu, dtype=torch.int32).cumsum(0)
            self._prefill.plan(
                qo_indptr.to(cfg.device), kv_indptr.to(cfg.device), indices, last.to(cfg.device),
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, ps, causal=True, **common,
            )  # fmt: skip
            self._wrapper = self._prefill

    def plan_capture(self, meta) -> None:
        """A graph-mode wrapper for ``meta``'s batch size and page-table width."""
        self.meta = meta
        bs, width = meta.page_table.shape
        dev = self.config.device
        self._graph_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=dev)
        self._graph_indices = torch.zeros(bs * width, dtype=torch.int32, device=dev)
        self._graph_last = torch.ones(bs, dtype=torch.int32, device=dev)
        self._graph = self._flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=self._tensor_cores,
            paged_kv_indptr_buffer=self._graph_indptr,
            paged_kv_indices_buffer=self._graph_indices,
            paged_kv_last_page_len_buffer=self._graph_last,
        )
        # Page ids cross through pinned memory: FlashInfer copies host indices
        # synchronously, which would stall the host behind the running step.
        self._indices_host = torch.empty(bs * width, dtype=torch.int32, pin_memory=True)
        self._indices_np = self._indices_host.numpy()
        self._indices_dev = torch.empty(bs * width, dtype=torch.int32, device=dev)
        self._staged = torch.cuda.Event()  # the last replan's copies have left the host
        ps = self.config.page_size
        table = meta.page_table.tolist()
        lens = list(meta.seq_lens_cpu)
        self.plan_replay(lens, [row[: -(-s // ps)] for row, s in zip(table, lens, strict=True)])
        self._wrapper = self._graph

    def plan_replay(self, seq_lens: list[int], pages: list[list[int]]) -> None:
        cfg = self.config
        ps = cfg.page_size
        counts = np.fromiter(map(len, pages), dtype=np.int32, count=len(pages))
        indptr = np.zeros(len(pages) + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        total = int(indptr[-1])
        last = np.asarray(seq_lens, dtype=np.int32) - (counts - 1) * ps
        self._staged.synchronize()
        self._indices_np[:total] = np.fromiter(
            itertools.chain.from_iterable(pages), dtype=np.int32, count=total
        )
        self._indices_dev[:total].copy_(self._indices_host[:total], non_blocking=True)
        self._graph.plan(
            torch.from_numpy(indptr), self._indices_dev[:total], torch.from_numpy(last),
            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, ps, non_blocking=True, **self._common(),
        )  # fmt: skip
        self._staged.record()

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is None:
            raise RuntimeError("plan() must be called before forward()")
        store_kv_fused(k, v, k_cache, v_cache, self.meta.cache_slots)
        return self._wrapper.run(q.contiguous(), (k_cache, v_cache))
