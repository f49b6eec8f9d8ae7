"""Load-balancing policies: pick one worker from the available ones of a role."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from pdcore.router.prefix_tree import PrefixTree
from pdcore.router.workers import Worker


class Policy(ABC):
    name = ""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    @abstractmethod
    def pick(self, workers: Sequence[Worker], key: Sequence | None = None) -> Worker:
        """One of ``workers`` (never empty); ``key``: the request's prefix, for affinity."""


class RandomPolicy(Policy):
    name = "random"

    def pick(self, workers, key=None):
        return self.rng.choice(workers)


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self, rng=None):
        super().__init__(rng)
        self._next = 0

    def pick(self, workers, key=None):
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker


class PowerOfTwoPolicy(Policy):
    """The less loaded of two random workers: near least-loaded without herding."""

    name = "power_of_two"

    def pick(self, workers, key=None):
        if len(workers) == 1:
            return workers[0]
        a, b = self.rng.sample(list(workers), 2)
        return a if a.load <= b.load else b


class CacheAwarePolicy(Policy):
    """Send a prompt where its prefix was sent before (its KV is likely cached there).

    sgl-router's rule, with its defaults: when the loads (requests in flight) are
    imbalanced (max - min > ``balance_abs`` and max > min * ``balance_rel``), the least
    loaded worker. Otherwise the worker holding the longest cached prefix of the key if
    it covers more than ``cache_threshold`` of the key, else the worker with the least
    cached text (so prompts without a shared prefix are spread evenly, instead of all
    going to whichever worker a load tie favours); ties go to the less loaded, then
    to a random one.
    """

    name = "cache_aware"

    def __init__(
        self,
        rng=None,
        cache_threshold: float = 0.3,
        balance_abs: int = 64,
        balance_rel: float = 1.5,
        tree: PrefixTree | None = None,
    ):
        super().__init__(rng)
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.tree = tree or PrefixTree()

    def pick(self, workers, key=None):
        loads = [w.load for w in workers]
        imbalanced = (
            max(loads) - min(loads) > self.balance_abs
            and max(loads) > min(loads) * self.balance_rel
        )
        if imbalanced or not key:
            choice = self._least(workers, lambda w: (w.load,))
        else:
            depth, owners = self.tree.match(key, {w.url for w in workers})
            if owners and depth > self.cache_threshold * min(len(key), self.tree.max_key):
                choice = self._least([w for w in workers if w.url in owners], lambda w: (w.load,))
            else:
                choice = self._least(workers, lambda w: (self.tree.size(w.url), w.load))
        if key:
            self.tree.insert(key, choice.url)
        return choice

    def _least(self, workers, rank) -> Worker:
        """The worker of lowest ``rank``; a random one among equals."""
        best = min(rank(w) for w in workers)
        return self.rng.choice([w for w in workers if rank(w) == best])


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (RandomPolicy, RoundRobinPolicy, PowerOfTwoPolicy, CacheAwarePolicy)
}


def make_policy(name: str, rng: random.Random | None = None, **cache_aware) -> Policy:
    """``cache_aware``: ``CacheAwarePolicy``'s thresholds (ignored by the other policies)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}. Supported: {', '.join(POLICIES)}") from None
    return cls(rng, **cache_aware) if cls is CacheAwarePolicy else cls(rng)


def request_key(body: dict) -> Sequence | None:
    """What cache_aware matches on: the prompt text or token ids (first prompt of a batch)."""
    for field in ("text", "prompt", "input_ids"):
        value = body.get(field)
        if isinstance(value, list) and value and isinstance(value[0], (list, str)):
            value = value[0]
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(x, int) for x in value):
            return tuple(value)
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return None
