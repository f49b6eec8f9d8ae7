"""``emu-torch``: the core's torch attention, safe to capture in an ``emu`` graph.

The torch backend computes its decode gather (slots and length mask) in ``plan``,
from the metadata's values at that moment; a replayed graph rewrites those
tensors in place without planning again. This backend re-derives the gather on
every decode pass, so a replay attends over the step's real pages and lengths.
"""

from __future__ import annotations

from pdcore.attention.torch_native import TorchNativeAttention


class ReplayableTorchAttention(TorchNativeAttention):
    cuda_graph_safe = True

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is not None and self.meta.is_decode:
            self.plan(self.meta)  # the static tensors now hold this step
        return super().forward(q, k, v, k_cache, v_cache)
