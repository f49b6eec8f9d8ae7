"""The core's own backends (CPU platform, torch MHA and MLA attention), registered like a plugin."""

from __future__ import annotations

from pdcore.attention.base import AttentionBackend, AttentionConfig, AttentionImpl, KVLayout
from pdcore.hookspecs import hookimpl
from pdcore.platform import CpuPlatform


def _torch_attention(config: AttentionConfig) -> AttentionImpl:
    from pdcore.attention.torch_native import TorchNativeAttention

    return TorchNativeAttention(config)


def _torch_mla_attention(config: AttentionConfig) -> AttentionImpl:
    from pdcore.attention.torch_mla import TorchMLAAttention

    return TorchMLAAttention(config)


@hookimpl
def pdcore_platforms():
    return [CpuPlatform()]


@hookimpl
def pdcore_attention_backends():
    return [
        AttentionBackend(
            name="torch",
            factory=_torch_attention,
            platforms=("cpu", "cuda", "npu"),
            priority=0,
            description="Paged attention on plain torch ops (SDPA); reference backend",
        ),
        AttentionBackend(
            name="torch_mla",
            factory=_torch_mla_attention,
            platforms=("cpu", "cuda", "npu"),
            kv_layout=KVLayout(kind="mla"),
            priority=0,
            description="Absorbed MLA over the latent cache on plain torch ops (SDPA); "
            "reference MLA backend",
        ),
    ]
