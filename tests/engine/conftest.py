"""Engine tests run torch on one thread: the tiny model's ops are far too small
to gain from threads, and on a loaded 2-core box threads only add contention."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
