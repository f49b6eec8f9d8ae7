"""The one place the Ascend kernels come from: ``torch_npu``, imported on first use.

Importing torch_npu loads CANN's libraries, so registration and ``pdcore
plugins`` never do it; the attention backends call ``torch_npu()`` when they
are built. Tests and CPU runs put a stand-in into ``sys.modules["torch_npu"]``
(see ``pdcore_ascend.testing``), which this import then returns.
"""

from __future__ import annotations

import types


def torch_npu() -> types.ModuleType:
    import torch_npu as module

    return module
