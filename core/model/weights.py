"""Copy HF-named checkpoint tensors into a model, refusing any mismatch.

The model's own module tree defines the expected names (fused ``MergedLinear``
modules expand to their HF sub-projections), so a missing, unexpected or
wrongly shaped tensor is reported by its checkpoint name instead of surfacing
later as garbage output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from pdcore.model.parallel import HFSlice, MergedLinear

# Buffers some older checkpoints carry that the models here recompute.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: rows of ``param``, from a slice of the tensor."""

    param: nn.Parameter
    where: HFSlice


def hf_weight_targets(model: nn.Module) -> dict[str, Target]:
    """HF tensor name -> its ``Target`` for every parameter row block of this rank."""
    targets = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            slices = (
                module.hf_slices(param_name)
                if hasattr(module, "hf_slices")
                else [HFSlice("", 0, param.shape[0])]
            )
            for where in slices:
                if isinstance(module, MergedLinear):
                    parent = module_name.rpartition(".")[0]
                    base = f"{parent}.{where.suffix}" if parent else where.suffix
                else:
                    base = module_name
                name = f"{base}.{param_name}" if base else param_name
                targets[name] = Target(param, where)
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
        where = target.where
        dest = target.param.data.narrow(0, where.dest_start, where.dest_len)
        if where.src_len is not None:  # this rank's slice of the full tensor
            full = list(dest.shape)
            full[where.src_dim] = where.src_full
            if tuple(tensor.shape) != tuple(full):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(full)}"
                )
            tensor = tensor.narrow(where.src_dim, where.src_start, where.src_len)
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ValueError(f"missing tensor(s) {_names(missing)}")
