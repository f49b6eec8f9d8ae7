"""DP attention's token exchange around the MLP: every group's tokens in, ours out.

Attention runs per DP group on that group's own tokens; the MLP (dense or MoE)
is split over all T ranks, so before it every rank needs every group's hidden
states. Groups hold different token counts (known up front: the leaders trade
them with the step plan), so each rank pads its rows to the largest count, one
all-gather over the TP group collects T copies, and the A identical copies of
each group (its attention ranks) shrink to one. After the MLP, whose all-reduce
spans all T ranks, each rank keeps its own group's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdcore.distributed.state import tp


@dataclass(frozen=True)
class DPTokens:
    """Token counts of every DP group in this forward (DP rank order)."""

    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Our ``[n, H]`` rows -> every group's rows ``[total, H]`` (DP rank order)."""
        info = tp()
        width = max(self.counts)
        if width == 0:
            return x
        padded = x.new_zeros(width, *x.shape[1:])
        padded[: x.shape[0]] = x
        import torch.distributed as dist

        parts = [torch.empty_like(padded) for _ in range(info.size)]
        dist.all_gather(parts, padded, group=info.group)
        a = info.attn_size  # a group's A ranks hold the same rows: take its first
        return torch.cat([parts[d * a][:n] for d, n in enumerate(self.counts)])

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        """Every group's rows -> ours."""
        dp = tp().dp_rank
        start = sum(self.counts[:dp])
        return y[start : start + self.counts[dp]]
