"""Radix prefix cache over KV pages: requests that share a prefix share its pages.

Only full pages are cached, so every edge holds a whole number of pages and a
match always ends on a page boundary (a partly filled page is still being
written by its request). Nodes on the path of a running request are locked
(reference counted) and never evicted; unlocked leaves are evicted least
recently used first, their pages going back to the allocator.

Accounting: ``cached_pages == locked_pages + evictable_pages``; every cached
page is owned by the cache, not by a request, and is not on the free list.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from pdcore.kvcache.allocator import PageAllocator


class RadixNode:
    """One edge of the tree: ``key`` tokens stored in ``pages`` (page-aligned)."""

    __slots__ = ("children", "key", "last_access", "lock_ref", "pages", "parent")

    def __init__(self, parent: RadixNode | None, key: tuple, pages: list[int]):
        self.parent = parent
        self.key = key
        self.pages = pages
        self.children: dict[tuple, RadixNode] = {}
        self.lock_ref = 0
        self.last_access = 0


class RadixCache:
    def __init__(self, page_size: int, allocator: PageAllocator):
        self.page_size = page_size
        self.allocator = allocator
        self._clock = itertools.count(1)
        self._new_root()

    def _new_root(self) -> None:
        self.root = RadixNode(None, (), [])
        self.root.lock_ref = 1  # never evicted
        self.cached_pages = 0
        self.locked_pages = 0

    @property
    def evictable_pages(self) -> int:
        return self.cached_pages - self.locked_pages

    # ---- lookup --------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int]) -> tuple[list[int], int]:
        """Pages of the longest cached page-aligned prefix, and its length in tokens."""
        pages, _ = self._match(tuple(token_ids))
        return pages, len(pages) * self.page_size

    def lock(self, token_ids: Sequence[int]) -> RadixNode:
        """Protect the cached prefix of ``token_ids`` from eviction; returns the handle.

        The handle stays valid across later splits (a split keeps the original
        node as the lower half), so ``unlock(handle)`` releases exactly this lock.
        """
        _, node = self._match(tuple(token_ids))
        handle = node
        while node is not self.root:
            if node.lock_ref == 0:
                self.locked_pages += len(node.pages)
            node.lock_ref += 1
            node = node.parent
        return handle

    def unlock(self, handle: RadixNode) -> None:
        node = handle
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("unlock of a radix node that is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.locked_pages -= len(node.pages)
            node = node.parent

    def _match(self, ids: tuple) -> tuple[list[int], RadixNode]:
        ps = self.page_size
        node, pos, pages = self.root, 0, []
        end = len(ids) // ps * ps
        now = next(self._clock)
        while pos < end:
            child = node.children.get(ids[pos : pos + ps])
            if child is None:
                break
            child.last_access = now
            shared = self._shared_pages(child.key, ids, pos)
            if shared < len(child.pages):
                child = self._split(child, shared)
            pages.extend(child.pages)
            pos += len(child.key)
            node = child
        return pages, node

    def _shared_pages(self, key: tuple, ids: tuple, start: int) -> int:
        ps = self.page_size
        limit = min(len(key), len(ids) - start) // ps
        n = 1  # the first page matched through the children dict
        while (
            n < limit and key[n * ps : (n + 1) * ps] == ids[start + n * ps : start + (n + 1) * ps]
        ):
            n += 1
        return n

    def _split(self, node: RadixNode, num_pages: int) -> RadixNode:
        """Cut ``node`` after ``num_pages``; returns the new upper half."""
        cut = num_pages * self.page_size
        upper = RadixNode(node.parent, node.key[:cut], node.pages[:num_pages])
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        node.parent.children[node.key[: self.page_size]] = upper
        node.key = node.key[cut:]
        node.pages = node.pages[num_pages:]
        node.parent = upper
        upper.children[node.key[: self.page_size]] = node
        return upper

    # ---- insertion -----------------------------------------------------------

    def insert(self, token_ids: Sequence[int], pages: Sequence[int]) -> list[int]:
        """Cache the full pages of ``token_ids`` (``pages[i]`` holds page ``i``).

        The cache takes ownership of pages it did not have; returns the caller's
        pages that duplicate pages already cached (same tokens computed twice) —
        the caller frees those. Pages already in the tree under the same id
        (a shared prefix) are neither taken nor returned.
        """
        ps = self.page_size
        ids = tuple(token_ids)
        n = len(ids) // ps
        if len(pages) < n:
            raise ValueError(f"{n} full pages of tokens but only {len(pages)} pages given")
        node, i, dups = self.root, 0, []
        now = next(self._clock)
        while i < n:
            child = node.children.get(ids[i * ps : (i + 1) * ps])
            if child is None:
                new = RadixNode(node, ids[i * ps : n * ps], list(pages[i:n]))
                new.last_access = now
                node.children[new.key[:ps]] = new
                self.cached_pages += n - i
                break
            child.last_access = now
            shared = self._shared_pages(child.key, ids[: n * ps], i * ps)
            if shared < len(child.pages):
                child = self._split(child, shared)
            dups.extend(
                mine for cached, mine in zip(child.pages, pages[i:], strict=False) if cached != mine
            )
            i += len(child.pages)
            node = child
        return dups

    # ---- eviction ------------------------------------------------------------

    def evict(self, num_pages: int) -> int:
        """Free up to ``num_pages`` pages of unlocked leaves, least recently used first.

        A leaf larger than what is still needed loses only its tail pages, so
        exactly ``min(num_pages, evictable_pages)`` pages are freed.
        """
        heap = [
            (n.last_access, id(n), n) for n in self._nodes() if not n.children and not n.lock_ref
        ]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, leaf = heapq.heappop(heap)
            take = min(num_pages - freed, len(leaf.pages))
            if take < len(leaf.pages):
                victims = leaf.pages[-take:]
                leaf.pages = leaf.pages[:-take]
                leaf.key = leaf.key[: len(leaf.pages) * self.page_size]
            else:
                victims = leaf.pages
                parent = leaf.parent
                del parent.children[leaf.key[: self.page_size]]
                if parent is not self.root and not parent.children and not parent.lock_ref:
                    heapq.heappush(heap, (parent.last_access, id(parent), parent))
            self.allocator.free(victims)
            self.cached_pages -= take
            freed += take
        return freed

    def reset(self) -> None:
        """Drop every cached page (for /flush_cache); refused while any node is locked."""
        if self.locked_pages or any(n.lock_ref for n in self._nodes()):
            raise RuntimeError("cannot reset the prefix cache while requests hold locks on it")
        for node in self._nodes():
            self.allocator.free(node.pages)
        self._new_root()

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def audit(self) -> tuple[int, int]:
        """``(cached, locked)`` pages recounted from the tree, to check the counters."""
        cached = locked = 0
        for node in self._nodes():
            cached += len(node.pages)
            locked += len(node.pages) if node.lock_ref else 0
        return cached, locked
