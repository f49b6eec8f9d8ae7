"""The ``npu`` platform: Huawei Ascend NPUs through torch_npu.

``import torch_npu`` loads CANN's shared libraries (libascendcl, libhccl, ...)
and registers ``torch.npu``; it is done inside methods so that merely listing
plugins works on machines without CANN, and its failure becomes the reason.
"""

from __future__ import annotations

import os

from pdcore.hookspecs import Availability
from pdcore.platform import MemoryInfo, MemoryKind, Platform
from pdcore_ascend.unverified import noted


def _torch_with_npu():
    """torch, after torch_npu has registered the ``npu`` device and ``torch.npu``."""
    import torch
    import torch_npu  # noqa: F401

    return torch


class AscendPlatform(Platform):
    """Ascend NPUs; KV buffers in NPU memory; HCCL for collectives."""

    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    memory_kind = MemoryKind.NPU
    priority = 90
    description = "Huawei Ascend NPU (torch_npu, CANN), KV in NPU memory"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"

    def availability(self) -> Availability:
        return noted(self._probe())

    def _probe(self) -> Availability:
        try:
            torch = _torch_with_npu()
        except (ImportError, OSError) as e:
            return Availability.no(f"torch_npu: {e}")
        except Exception as e:  # torch_npu raises RuntimeError on torch/CANN version mismatch
            return Availability.no(f"torch_npu: {type(e).__name__}: {e}")
        try:
            count = torch.npu.device_count()
        except RuntimeError as e:
            return Availability.no(f"NPU driver error: {e}")
        if count == 0:
            visible = os.environ.get(self.visible_devices_env)
            shown = "unset" if visible is None else repr(visible)
            return Availability.no(f"no NPU visible ({self.visible_devices_env}={shown})")
        return Availability.yes(f"{count} device(s)")

    def device_count(self) -> int:
        return _torch_with_npu().npu.device_count()

    def memory_info(self, device_index: int = 0) -> MemoryInfo:
        free, total = _torch_with_npu().npu.mem_get_info(device_index)
        return MemoryInfo(free, total)

    def set_device(self, device_index: int) -> None:
        _torch_with_npu().npu.set_device(device_index)

    def torch_device(self, device_index: int = 0):
        # torch knows the "npu" device type only after torch_npu registered it.
        return _torch_with_npu().device("npu", device_index)

    def supported_dtypes(self) -> tuple[str, ...]:
        # Atlas A2/A3 (910B/910C) have bf16; 310P-class chips do not.
        if _torch_with_npu().npu.is_bf16_supported():
            return ("float32", "bfloat16", "float16")
        return ("float32", "float16")

    def default_dtype(self) -> str:
        return "bfloat16" if "bfloat16" in self.supported_dtypes() else "float16"

    # No ``make_event`` or graph capture yet: torch_npu has ``torch.npu.Event`` and
    # ``torch.npu.NPUGraph``, but no NPU has run pdcore's overlap or decode graphs,
    # so decode steps run eagerly and their tokens are read synchronously.

    def to_device_async(self, tensor, device):
        return tensor.pin_memory().to(device, non_blocking=True)
