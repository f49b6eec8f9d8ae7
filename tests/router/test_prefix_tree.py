"""The cache_aware prefix tree stays bounded and forgets its oldest keys first."""

from __future__ import annotations

from pdcore.router.prefix_tree import PrefixTree


def test_longest_match_among_given_tenants_only():
    tree = PrefixTree()
    tree.insert("abcdef", "A")
    tree.insert("abcxyz", "B")
    assert tree.match("abcdeQ", {"A", "B"}) == (5, {"A"})
    assert tree.match("abcdeQ", {"B"}) == (3, {"B"})
    assert tree.match("zzz", {"A", "B"}) == (0, set())


def test_oldest_entries_are_evicted_past_the_bound():
    tree = PrefixTree(max_entries=2)
    tree.insert("old", "A")
    tree.insert("mid", "A")
    tree.insert("new", "A")
    assert len(tree) == 2
    assert tree.match("old", {"A"})[0] == 0, "evicted key still matches"
    assert tree.match("new", {"A"})[0] == 3
    assert "o" not in tree.root.children, "evicted nodes were not pruned"


def test_keys_are_cut_to_max_key():
    tree = PrefixTree(max_key=4)
    tree.insert("abcdefgh", "A")
    assert tree.match("abcdefgh", {"A"})[0] == 4


def test_size_counts_each_tenants_nodes_once_and_shrinks_on_eviction():
    tree = PrefixTree(max_entries=3)
    tree.insert("abcd", "A")
    tree.insert("abxy", "A")  # shares "ab"
    tree.insert("abcd", "B")
    assert (tree.size("A"), tree.size("B")) == (6, 4), "shared prefixes count once per tenant"
    tree.insert("zz", "B")  # evicts A's oldest key, "abcd"
    assert tree.size("A") == 4, "A's evicted branch 'cd' must leave its size"
    assert tree.size("B") == 6
