"""Host KV buffers: zeroed, writable, and huge-page backed where the kernel allows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pdcore.kvcache import host_memory
from pdcore.kvcache.pool import KVShape, allocate_layer_caches

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_kib_at(addr: int) -> int:
    """AnonHugePages (KiB) of the mapping of this process that holds ``addr``."""
    found, huge = False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= addr < hi
        elif found and head == "AnonHugePages:":
            huge = int(line.split()[1])
    return huge


def test_large_buffer_is_zeroed_shaped_and_writable():
    t = host_memory.zeros((64, 16, 2, 512), torch.float32)  # 4 MiB
    assert t.shape == (64, 16, 2, 512) and t.dtype == torch.float32
    assert t.is_contiguous() and not t.any(), "fresh KV buffer must be zeros"
    t[3, 5] = 1.5
    assert t.sum().item() == 1.5 * 2 * 512


def test_large_buffer_starts_on_a_huge_page_boundary():
    t = host_memory.zeros((4 << 20,), torch.uint8)
    assert t.data_ptr() % host_memory.HUGE_PAGE == 0


def test_small_buffer_is_plain_torch_memory():
    t = host_memory.zeros((16, 8), torch.bfloat16)
    assert t.shape == (16, 8) and t.dtype == torch.bfloat16 and not t.any()


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="transparent huge pages disabled"
)
def test_large_buffer_is_backed_by_huge_pages():
    t = host_memory.zeros((16 << 20,), torch.uint8)
    huge = _huge_kib_at(t.data_ptr())
    assert huge >= 2048, f"expected huge pages under a 16 MiB KV buffer, smaps says {huge} KiB"


def test_cpu_pool_buffers_come_from_host_memory():
    shape = KVShape(num_layers=2, num_kv_heads=2, head_dim=64, page_size=16, dtype=torch.float32)
    buffers, pairs = allocate_layer_caches(shape, 512, torch.device("cpu"))  # 4 MiB each
    assert len(buffers) == 4 and len(pairs) == 2
    assert all(b.data_ptr() % host_memory.HUGE_PAGE == 0 for b in buffers)
    assert not any(b.any() for b in buffers)
