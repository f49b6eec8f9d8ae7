"""Fixture ``npu_ops``: the fake torch_npu installed as ``torch_npu`` for one test."""

from __future__ import annotations

import sys

import pytest
from pdcore_ascend.testing.fake_torch_npu import make_module


@pytest.fixture
def npu_ops(monkeypatch):
    """The fake module; ``npu_ops.calls`` lists every operator call made through it."""
    module = make_module()
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    return module
