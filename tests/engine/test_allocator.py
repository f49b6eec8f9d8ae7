"""Page allocator: exact counts, all-or-nothing allocation, misuse raises."""

from __future__ import annotations

import pytest

from pdcore.kvcache.allocator import PageAllocator


def test_alloc_and_free_keep_exact_counts():
    a = PageAllocator(9, reserved=1)
    assert a.capacity == 8 and a.num_free == 8 and a.num_used == 0
    first = a.alloc(3)
    second = a.alloc(5)
    assert sorted(first + second) == list(range(1, 9)), "page 0 is never handed out"
    assert a.num_free == 0 and a.num_used == 8
    assert a.alloc(1) is None
    a.free(first)
    assert a.num_free == 3
    assert sorted(a.alloc(3)) == sorted(first)


def test_failed_alloc_takes_nothing():
    a = PageAllocator(5)
    assert a.alloc(5) is None
    assert a.num_free == 4
    assert a.alloc(0) == []
    with pytest.raises(ValueError):
        a.alloc(-1)


def test_double_free_raises_and_leaves_state_intact():
    a = PageAllocator(6)
    pages = a.alloc(3)
    a.free(pages[:1])
    with pytest.raises(ValueError, match="double free"):
        a.free(pages)  # pages[0] is already free
    assert a.num_free == 3, "the partial free was rolled back"
    assert all(a.is_allocated(p) for p in pages[1:])
    with pytest.raises(ValueError, match="double free"):
        a.free([pages[1], pages[1]])
    assert a.is_allocated(pages[1])


@pytest.mark.parametrize("bad", [0, -1, 6, 100, "1", 1.0])
def test_foreign_ids_raise(bad):
    a = PageAllocator(6)
    a.alloc(5)
    with pytest.raises(ValueError, match="does not belong"):
        a.free([bad])
    assert a.num_free == 0
