"""Copy HF-named checkpoint tensors into a model, refusing any mismatch.

The model's own module tree defines the expected names (fused ``MergedLinear``
modules expand to their HF sub-projections), so a missing, unexpected or
wrongly shaped tensor is reported by its checkpoint name instead of surfacing
later as garbage output.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pdcore.model.layers import MergedLinear

# Buffers some older checkpoints carry that the models here recompute.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_weight_targets(model: nn.Module) -> dict[str, tuple[nn.Parameter, int, int]]:
    """HF tensor name -> (parameter, first row, row count) for every parameter row block."""
    targets = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if isinstance(module, MergedLinear):
                parent = module_name.rpartition(".")[0]
                for shard, (start, size) in module.shard_rows().items():
                    name = f"{parent}.{shard}.{param_name}" if parent else f"{shard}.{param_name}"
                    targets[name] = (param, start, size)
            else:
                name = f"{module_name}.{param_name}" if module_name else param_name
                targets[name] = (param, 0, param.shape[0])
    return targets


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


@torch.no_grad()
def load_hf_weights(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], ignore: Iterable[str] = ()
) -> None:
    """Load every parameter from ``weights``; ValueError names the offending tensor(s).

    ``ignore``: checkpoint names to skip (``lm_head.weight`` of tied models).
    """
    targets = hf_weight_targets(model)
    skip = set(ignore)
    loaded: set[str] = set()
    for name, tensor in weights:
        if name in skip or name.endswith(IGNORED_SUFFIXES):
            continue
        target = targets.get(name)
        if target is None:
            raise ValueError(f"unexpected tensor {name!r}: the model has no such parameter")
        param, start, size = target
        dest = param.data.narrow(0, start, size)
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ValueError(f"missing tensor(s) {_names(missing)}")
