"""Radix prefix cache: page-granular sharing, LRU eviction, locks, reset, accounting."""

from __future__ import annotations

import random

import pytest

from pdcore.kvcache.allocator import PageAllocator
from pdcore.kvcache.radix_cache import RadixCache

PS = 4


def setup(num_pages=64):
    alloc = PageAllocator(num_pages + 1)
    return alloc, RadixCache(PS, alloc)


def check(alloc, cache, held=0):
    """Every page is free, cached, or held by the test (nothing leaks)."""
    assert cache.audit() == (cache.cached_pages, cache.locked_pages)
    assert alloc.num_free + cache.cached_pages + held == alloc.capacity


def cache_seq(alloc, cache, tokens):
    pages = alloc.alloc(len(tokens) // PS)
    assert cache.insert(tokens, pages) == []
    return pages


def test_only_full_pages_are_cached_and_matched():
    alloc, cache = setup()
    tokens = list(range(10))  # 2 full pages + 2 tokens
    pages = alloc.alloc(3)
    assert cache.insert(tokens, pages) == []
    assert cache.cached_pages == 2
    alloc.free(pages[2:])  # the partial page stays the caller's
    assert cache.match_prefix(tokens) == (pages[:2], 8)
    assert cache.match_prefix(tokens[:7]) == (pages[:1], 4)
    assert cache.match_prefix(tokens[:3]) == ([], 0)
    assert cache.match_prefix([99, *tokens[1:]]) == ([], 0)
    check(alloc, cache)


def test_shared_prefix_is_shared_and_duplicates_are_returned():
    alloc, cache = setup()
    a = list(range(12))
    pa = cache_seq(alloc, cache, a)
    b = [*a[:8], 50, 51, 52, 53]
    got, n = cache.match_prefix(b)
    assert (got, n) == (pa[:2], 8)
    pb_own = alloc.alloc(1)
    assert cache.insert(b, got + pb_own) == [], "shared pages are neither taken nor returned"
    assert cache.cached_pages == 4
    assert cache.match_prefix(b) == (pa[:2] + pb_own, 12)
    # The same tokens computed again in other pages: the cache keeps its own.
    again = alloc.alloc(3)
    assert cache.insert(a, again) == again
    alloc.free(again)
    assert cache.match_prefix(a) == (pa, 12)
    check(alloc, cache)


def test_insert_extends_a_split_edge():
    alloc, cache = setup()
    a = list(range(16))
    pa = cache_seq(alloc, cache, a)
    b = [*a[:4]] + [70] * 8
    own = alloc.alloc(2)
    assert cache.insert(b, pa[:1] + own) == []
    assert cache.match_prefix(a) == (pa, 16)
    assert cache.match_prefix(b) == (pa[:1] + own, 12)
    check(alloc, cache)


def test_lru_eviction_order_and_exact_counts():
    alloc, cache = setup()
    x = cache_seq(alloc, cache, [1] * 8)
    y = cache_seq(alloc, cache, [2] * 8)
    z = cache_seq(alloc, cache, [3] * 8)
    cache.match_prefix([1] * 8)  # x is now the most recently used
    assert cache.evict(2) == 2
    assert cache.match_prefix([2] * 8) == ([], 0), "y was least recently used"
    assert cache.evict(1) == 1  # z loses its tail page only
    assert cache.match_prefix([3] * 8) == (z[:1], 4)
    assert cache.match_prefix([1] * 8) == (x, 8)
    assert not alloc.is_allocated(y[0]) and not alloc.is_allocated(z[1])
    check(alloc, cache)
    assert cache.evict(100) == 3
    assert cache.cached_pages == 0
    check(alloc, cache)


def test_evicting_a_leaf_exposes_its_parent():
    alloc, cache = setup()
    base = list(range(8))
    pages = cache_seq(alloc, cache, base + [9] * 4)
    own = alloc.alloc(1)
    cache.insert(base + [8] * 4, pages[:2] + own)
    assert cache.evict(4) == 4  # both leaves, then the shared parent
    assert cache.cached_pages == 0
    check(alloc, cache)


def test_locked_prefix_survives_eviction():
    alloc, cache = setup()
    a = list(range(12))
    pa = cache_seq(alloc, cache, a)
    cache_seq(alloc, cache, [7] * 8)
    handle = cache.lock(a[:8])  # a running request uses the first two pages
    assert cache.locked_pages == 2 and cache.evictable_pages == 3
    assert cache.evict(100) == 3
    assert cache.match_prefix(a) == (pa[:2], 8)
    with_split = cache.lock(a[:4])  # splitting a locked edge keeps both locks valid
    cache.unlock(handle)
    assert cache.locked_pages == 1
    cache.unlock(with_split)
    assert cache.locked_pages == 0 and cache.evictable_pages == 2
    with pytest.raises(RuntimeError):
        cache.unlock(with_split)
    check(alloc, cache)


def test_reset_frees_everything_but_not_while_locked():
    alloc, cache = setup()
    cache_seq(alloc, cache, list(range(20)))
    handle = cache.lock(list(range(8)))
    with pytest.raises(RuntimeError, match="locks"):
        cache.reset()
    cache.unlock(handle)
    cache.reset()
    assert cache.cached_pages == 0 and alloc.num_free == alloc.capacity
    assert cache.match_prefix(list(range(20))) == ([], 0)


def test_random_operations_keep_the_accounting_exact():
    rng = random.Random(0)
    alloc, cache = setup(num_pages=40)
    handles = []
    for _ in range(400):
        op = rng.random()
        if op < 0.5:
            tokens = [rng.randrange(3) for _ in range(rng.randrange(1, 6) * PS)]
            got, n = cache.match_prefix(tokens)
            handle = cache.lock(tokens[:n])
            need = len(tokens) // PS - len(got)
            if need > alloc.num_free:
                cache.evict(need - alloc.num_free)
            own = alloc.alloc(need)
            if own is None:
                cache.unlock(handle)
                continue
            alloc.free(cache.insert(tokens, got + own))
            handles.append(cache.lock(tokens))
            cache.unlock(handle)
        elif op < 0.8 and handles:
            cache.unlock(handles.pop(rng.randrange(len(handles))))
        else:
            freed = cache.evict(rng.randrange(1, 6))
            assert freed <= 5
        check(alloc, cache)
        assert cache.locked_pages <= cache.cached_pages
    for h in handles:
        cache.unlock(h)
    assert cache.locked_pages == 0
    cache.evict(cache.evictable_pages)
    assert alloc.num_free == alloc.capacity
