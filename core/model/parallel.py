"""Tensor-parallel linear and embedding layers, and how each loads its HF shard.

Megatron-style: a column-parallel layer splits its output rows over the TP
ranks (no communication), a row-parallel layer splits its input columns and
sums partial outputs with one all-reduce, the embedding and LM head split the
vocabulary. At TP=1 every class is its plain torch counterpart. Each class
splits over ``group`` (default: the whole TP group); under DP attention the
attention projections, the embedding and the LM head split over the attention
group instead.

Every class answers ``hf_slices(param_name)``: which rows of its parameter come
from which slice of which HF tensor, so ``pdcore.model.weights`` loads a
rank's shard straight from full checkpoint tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdcore.distributed.state import Group, all_gather_last, all_reduce, shard_range, tp
from pdcore.model.kernels import TORCH_KERNELS, LayerKernels


@dataclass(frozen=True)
class HFSlice:
    """Rows ``[dest_start, dest_start + dest_len)`` of a parameter come from HF
    tensor ``suffix`` (``""``: the module's own name), which is ``src_full`` long
    on ``src_dim``, narrowed there to ``[src_start, src_start + src_len)``."""

    suffix: str
    dest_start: int
    dest_len: int
    src_dim: int = 0
    src_start: int = 0
    src_len: int | None = None  # None: the whole tensor
    src_full: int | None = None


def _full(param: nn.Parameter, suffix: str = "") -> list[HFSlice]:
    return [HFSlice(suffix, 0, param.shape[0])]


class ColumnLinear(nn.Linear):
    """Output rows split over ranks: rank r computes rows ``part`` of the full output."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, part=None, group: Group | None = None
    ):
        g = group or tp().full
        self.full_out = out_features
        self.part = part or shard_range(out_features, g.rank, g.size)
        super().__init__(in_features, self.part[1], bias=bias)

    def hf_slices(self, param_name: str) -> list[HFSlice]:
        start, count = self.part
        return [HFSlice("", 0, count, 0, start, count, self.full_out)]


class MergedLinear(nn.Linear):
    """Several column-parallel projections of one input stacked along the rows.

    ``shards`` maps the HF sub-module name (e.g. ``"q_proj"``) to its full row
    count, in stacking order; ``parts`` optionally gives this rank's
    ``(first row, row count)`` of each (default: an equal split by TP rank).
    """

    def __init__(
        self,
        in_features: int,
        shards: dict[str, int],
        bias: bool,
        parts: dict[str, tuple[int, int]] | None = None,
        group: Group | None = None,
    ):
        g = group or tp().full
        parts = dict(parts or {})
        for name, full in shards.items():
            parts.setdefault(name, shard_range(full, g.rank, g.size))
        self.shards = dict(shards)
        self.parts = {name: parts[name] for name in shards}
        super().__init__(in_features, sum(c for _, c in self.parts.values()), bias=bias)

    def shard_rows(self) -> dict[str, tuple[int, int]]:
        """HF name -> (first local row, local row count)."""
        rows, start = {}, 0
        for name, (_, count) in self.parts.items():
            rows[name] = (start, count)
            start += count
        return rows

    @property
    def local_sizes(self) -> list[int]:
        return [count for _, count in self.parts.values()]

    def hf_slices(self, param_name: str) -> list[HFSlice]:
        rows = self.shard_rows()
        return [
            HFSlice(name, rows[name][0], count, 0, first, count, self.shards[name])
            for name, (first, count) in self.parts.items()
        ]


class RowLinear(nn.Linear):
    """Input columns split over ranks; partial outputs are summed (one all-reduce).

    The bias is added once, after the sum.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group: Group | None = None):
        g = group or tp().full
        self.full_in = in_features
        self.part = shard_range(in_features, g.rank, g.size)
        super().__init__(self.part[1], out_features, bias=bias)
        self.group = group  # None: the TP group

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        out = all_reduce(kernels.linear(x, self.weight), self.group)
        return out if self.bias is None else out + self.bias

    def hf_slices(self, param_name: str) -> list[HFSlice]:
        if param_name == "bias":
            return _full(self.bias)
        start, count = self.part
        return [HFSlice("", 0, self.out_features, 1, start, count, self.full_in)]


def vocab_part(vocab_size: int, group: Group) -> tuple[int, int, int]:
    """``(first id, ids loaded, rows per rank)``: the vocab padded to a multiple of
    ``group``'s size."""
    per_rank = -(-vocab_size // group.size)
    start = group.rank * per_rank
    return start, max(0, min(per_rank, vocab_size - start)), per_rank


class VocabEmbedding(nn.Embedding):
    """Rows of the vocabulary split over ranks; ids outside a rank's rows embed to
    zero there and the all-reduce fills them in."""

    def __init__(self, vocab_size: int, hidden_size: int, group: Group | None = None):
        self.group = group or tp().full
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_count, per_rank = vocab_part(vocab_size, self.group)
        super().__init__(per_rank, hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return super().forward(ids)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_count)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside.unsqueeze(-1), 0), self.group)

    def hf_slices(self, param_name: str) -> list[HFSlice]:
        return [
            HFSlice("", 0, self.vocab_count, 0, self.vocab_start, self.vocab_count, self.vocab_size)
        ]


class VocabHead(nn.Linear):
    """LM head with the vocabulary split like ``VocabEmbedding``."""

    def __init__(self, hidden_size: int, vocab_size: int, group: Group | None = None):
        self.group = group or tp().full
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_count, per_rank = vocab_part(vocab_size, self.group)
        super().__init__(hidden_size, per_rank, bias=False)

    def hf_slices(self, param_name: str) -> list[HFSlice]:
        return [
            HFSlice("", 0, self.vocab_count, 0, self.vocab_start, self.vocab_count, self.vocab_size)
        ]


def gather_logits(local: torch.Tensor, vocab_size: int, group: Group | None = None) -> torch.Tensor:
    """Every rank's slice of the vocabulary, joined and trimmed of the padding."""
    return all_gather_last(local, group)[..., :vocab_size]
