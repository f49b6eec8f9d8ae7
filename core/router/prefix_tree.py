"""An approximate prefix tree of recent request keys, per worker (cache_aware).

Keys are strings or token-id tuples, cut to ``max_key`` elements; only the
``max_entries`` most recent keys are kept, so memory stays bounded and stale
affinity fades like the workers' own prefix caches do. ``size(tenant)`` is how
many nodes (characters or tokens) a tenant holds, shared prefixes counted once:
sgl-router's measure of how much a worker has cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class _Node:
    __slots__ = ("children", "tenants")

    def __init__(self):
        self.children: dict = {}
        self.tenants: dict[str, int] = {}  # worker url -> keys through this node


class PrefixTree:
    def __init__(self, max_entries: int = 4096, max_key: int = 512):
        self.root = _Node()
        self.max_entries = max_entries
        self.max_key = max_key
        self._entries: OrderedDict[tuple[str, tuple], None] = OrderedDict()
        self._sizes: dict[str, int] = {}  # tenant -> nodes it holds

    def insert(self, key: Sequence, tenant: str) -> None:
        key = tuple(key[: self.max_key])
        entry = (tenant, key)
        if entry in self._entries:
            self._entries.move_to_end(entry)
            return
        self._entries[entry] = None
        node, gained = self.root, 0
        for item in key:
            node = node.children.setdefault(item, _Node())
            count = node.tenants.get(tenant, 0)
            node.tenants[tenant] = count + 1
            gained += count == 0
        self._sizes[tenant] = self._sizes.get(tenant, 0) + gained
        while len(self._entries) > self.max_entries:
            old_tenant, old_key = self._entries.popitem(last=False)[0]
            self._remove(old_key, old_tenant)

    def match(self, key: Sequence, tenants: set[str]) -> tuple[int, set[str]]:
        """Longest prefix of ``key`` cached by one of ``tenants``: its length and owners."""
        node, depth, owners = self.root, 0, set()
        for i, item in enumerate(key[: self.max_key]):
            node = node.children.get(item)
            if node is None:
                break
            here = tenants.intersection(node.tenants)
            if not here:
                break
            depth, owners = i + 1, here
        return depth, owners

    def size(self, tenant: str) -> int:
        """Nodes ``tenant`` holds: how much of the tree is its cached text."""
        return self._sizes.get(tenant, 0)

    def _remove(self, key: tuple, tenant: str) -> None:
        node = self.root
        for depth, item in enumerate(key):
            child = node.children[item]
            child.tenants[tenant] -= 1
            if not child.tenants[tenant]:
                del child.tenants[tenant]
                self._sizes[tenant] -= 1
            if not child.tenants:
                # no other key passes here: the rest of this key was this tenant's alone
                self._sizes[tenant] -= len(key) - depth - 1
                del node.children[item]
                break
            node = child
        if not self._sizes[tenant]:
            del self._sizes[tenant]

    def __len__(self) -> int:
        return len(self._entries)
