"""What the ``flashinfer`` backend accepts and how it decodes; no torch or
FlashInfer import, so the plugin's registration can name them."""

from __future__ import annotations

import os

SUPPORTED_DTYPES = ("float16", "bfloat16")
SUPPORTED_HEAD_DIMS = (64, 128, 256)  # head_dim 32 fails in FlashInfer 0.7.2's prefill
TENSOR_CORE_VARS = ("PDCORE_FLASHINFER_USE_TENSOR_CORE", "SGLANG_FLASHINFER_USE_TENSOR_CORE")


def use_tensor_cores(num_heads: int, num_kv_heads: int, env=os.environ) -> bool:
    """Decode on tensor cores (FlashInfer's prefill kernels) or CUDA cores. The
    variables (SGLang's name too) override; by default tensor cores from a GQA
    group of 4 up, where a head group fills enough of an MMA tile."""
    for var in TENSOR_CORE_VARS:
        raw = env.get(var, "").strip().lower()
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        if raw:
            raise ValueError(f"{var} must be true or false, not {env[var]!r}")
    return num_heads // num_kv_heads >= 4
