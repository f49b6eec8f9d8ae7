"""Entry point ``cuda``: registers the CUDA platform; imports no torch or CUDA library."""

from __future__ import annotations

from pdcore.hookspecs import hookimpl
from pdcore_cuda.platform import CudaPlatform


@hookimpl
def pdcore_platforms():
    return [CudaPlatform()]
