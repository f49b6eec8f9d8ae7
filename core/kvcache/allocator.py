"""Page allocator: hands out KV page ids from a free list, with exact counts.

Pages move between three owners (free list, requests, radix cache); a page id
freed twice or never handed out means two owners think they hold it, which
would silently corrupt another request's KV, so both raise at once.
"""

from __future__ import annotations


class PageAllocator:
    """Free list over page ids ``reserved .. num_pages - 1``.

    The first ``reserved`` ids (page 0: the padding page that page-table rows
    point at past a request's end) are never handed out.
    """

    def __init__(self, num_pages: int, reserved: int = 1):
        if num_pages <= reserved:
            raise ValueError(f"need more than {reserved} pages, got {num_pages}")
        self.num_pages = num_pages
        self.reserved = reserved
        # Popped from the end: low ids first, which keeps tests readable.
        self._free = list(range(num_pages - 1, reserved - 1, -1))
        self._in_use = bytearray(num_pages)

    @property
    def capacity(self) -> int:
        """Pages that can ever be handed out."""
        return self.num_pages - self.reserved

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.capacity - len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """``n`` page ids, or None (and nothing taken) when fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        for p in pages:
            self._in_use[p] = 1
        return pages

    def free(self, pages) -> None:
        """Return pages; raises on a foreign id or a page that is already free."""
        pages = list(pages)
        for i, p in enumerate(pages):
            if not isinstance(p, int) or not self.reserved <= p < self.num_pages:
                raise ValueError(f"page {p!r} does not belong to this allocator")
            if not self._in_use[p]:
                for q in pages[:i]:  # leave the allocator as it was
                    self._in_use[q] = 1
                raise ValueError(f"double free of page {p}")
            self._in_use[p] = 0
        self._free.extend(reversed(pages))

    def is_allocated(self, page: int) -> bool:
        return self.reserved <= page < self.num_pages and bool(self._in_use[page])
