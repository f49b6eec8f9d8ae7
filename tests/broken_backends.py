"""Deliberately wrong backends: the conformance kit must fail each of them."""

from __future__ import annotations

import torch.nn.functional as F
from pdcore_example.tcp_engine import TcpTransferEngine

from pdcore.attention.base import store_kv
from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.disaggregation.transfer import TransferStatus


class TruncatingEngine(TcpTransferEngine):
    """Sends every run one byte short (an off-by-one in length handling)."""

    def _write(self, peer, runs, notify):
        return super()._write(peer, [(a, b, n - 1) for a, b, n in runs], notify)


class LyingEngine(TcpTransferEngine):
    """Reports success without moving a byte."""

    def _write(self, peer, runs, notify):
        return None

    def _poll(self, token):
        return TransferStatus.DONE


class NoCausalMaskAttention(TorchNativeAttention):
    """Lets every query see the whole sequence (future tokens included)."""

    def _extend(self, q, k_cache, v_cache):
        meta, cfg = self.meta, self.config
        out, start = q.clone(), 0
        for row, (seq, ext) in enumerate(zip(meta.seq_lens_cpu, meta.extend_lens_cpu, strict=True)):
            keys = self._gather(k_cache, row, seq).transpose(0, 1)
            values = self._gather(v_cache, row, seq).transpose(0, 1)
            res = F.scaled_dot_product_attention(
                q[start : start + ext].transpose(0, 1),
                keys,
                values,
                scale=cfg.softmax_scale,
                enable_gqa=True,
            )
            out[start : start + ext] = res.transpose(0, 1)
            start += ext
        return out


class ForgetsToStoreAttention(TorchNativeAttention):
    """Attends correctly over the new tokens but never writes them to the cache."""

    def forward(self, q, k, v, k_cache, v_cache):
        k_copy, v_copy = k_cache.clone(), v_cache.clone()
        store_kv(k, v, k_copy, v_copy, self.meta.cache_slots)
        return (
            self._decode(q, k_copy, v_copy)
            if self.meta.is_decode
            else self._extend(q, k_copy, v_copy)
        )
