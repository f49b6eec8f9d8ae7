"""Entry point ``ascend``: registers the NPU platform; imports neither torch nor torch_npu."""

from __future__ import annotations

from pdcore.hookspecs import hookimpl
from pdcore_ascend.platform import AscendPlatform


@hookimpl
def pdcore_platforms():
    return [AscendPlatform()]
