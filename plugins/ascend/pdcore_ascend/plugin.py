"""Entry point ``ascend``: the NPU platform and the ``ascend`` / ``ascend-mla`` attention
backends. Imports neither torch nor torch_npu: kernels load in the factories, and
availability is only checked when asked.
"""

from __future__ import annotations

from pdcore.attention.base import AttentionBackend, KVLayout
from pdcore.hookspecs import Availability, hookimpl
from pdcore_ascend.platform import AscendPlatform

# Multiples of 16 within PagedAttention's block_size x head_dim <= 128 x 128 (head_dim
# <= 128); SGLang's and vllm-ascend's default is 128. Pages are the pool's NHD layout.
PAGE_SIZES = (16, 32, 64, 128)


def _mha_factory(config):
    from pdcore_ascend.attention import AscendAttention

    return AscendAttention(config)


def _mla_factory(config):
    from pdcore_ascend.mla_attention import AscendMLAAttention

    return AscendMLAAttention(config)


def _check() -> Availability:
    """The kernels are torch_npu's: available exactly when the NPU platform is."""
    platform = AscendPlatform().availability()
    if not platform.ok:
        return Availability.no(f"needs an Ascend NPU: {platform.reason}")
    return platform


@hookimpl
def pdcore_platforms():
    return [AscendPlatform()]


@hookimpl
def pdcore_attention_backends():
    return [
        AttentionBackend(
            name="ascend",
            factory=_mha_factory,
            platforms=("npu",),
            kv_layout=KVLayout(kind="mha", page_sizes=PAGE_SIZES, cache_layout="NHD"),
            check=_check,
            priority=10,
            description="torch_npu reshape-and-cache, fused infer attention (prefill), "
            "paged attention (decode); float16/bfloat16",
        ),
        AttentionBackend(
            name="ascend-mla",
            factory=_mla_factory,
            platforms=("npu",),
            kv_layout=KVLayout(kind="mla", page_sizes=PAGE_SIZES, cache_layout="NHD"),
            check=_check,
            priority=-10,  # only on request: no pdcore model is MLA yet
            description="absorbed MLA over a latent cache with torch_npu's fused infer "
            "attention (query_rope/key_rope)",
        ),
    ]
