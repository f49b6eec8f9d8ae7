"""Load-balancing policies pick from the available workers as their names promise."""

from __future__ import annotations

import random

import pytest

from pdcore.router.policies import POLICIES, CacheAwarePolicy, make_policy, request_key
from pdcore.router.workers import Worker


def workers(*loads: int) -> list[Worker]:
    return [Worker(f"http://w{i}:1", "prefill", reported_load=load) for i, load in enumerate(loads)]


def test_round_robin_cycles_in_order():
    ws = workers(0, 0, 0)
    policy = make_policy("round_robin")
    picked = [policy.pick(ws).url for _ in range(6)]
    assert picked == [w.url for w in ws] * 2, picked


def test_random_picks_every_worker_eventually():
    ws = workers(0, 0, 0)
    policy = make_policy("random", random.Random(1))
    assert {policy.pick(ws).url for _ in range(100)} == {w.url for w in ws}


def test_power_of_two_picks_the_less_loaded_of_its_two():
    ws = workers(9, 1)
    policy = make_policy("power_of_two", random.Random(3))
    assert all(policy.pick(ws) is ws[1] for _ in range(20)), "chose the busier worker"


def test_power_of_two_load_counts_router_in_flight_too():
    ws = workers(0, 0)
    ws[0].in_flight = 5
    assert make_policy("power_of_two").pick(ws) is ws[1]


def test_cache_aware_sends_a_shared_prefix_to_the_same_worker():
    ws = workers(0, 0, 0)
    policy = make_policy("cache_aware")
    prompt = "You are a helpful assistant. " * 4
    first = policy.pick(ws, prompt + "What is 2+2?")
    first.in_flight += 1  # slightly busier, still within the balance threshold
    again = policy.pick(ws, prompt + "Name a colour.")
    assert again is first, "a request sharing a long prefix went elsewhere"


def test_cache_aware_unmatched_prompt_goes_to_least_loaded():
    ws = workers(3, 0, 5)
    assert make_policy("cache_aware").pick(ws, "fresh prompt") is ws[1]


def test_cache_aware_falls_back_to_least_loaded_when_imbalanced():
    ws = workers(0, 0)
    policy = CacheAwarePolicy(balance_abs=4, balance_rel=1.5)
    owner = policy.pick(ws, "shared prefix " * 10)
    owner.in_flight = 10  # far busier than the other: affinity loses
    other = ws[1] if owner is ws[0] else ws[0]
    assert policy.pick(ws, "shared prefix " * 10) is other


def test_cache_aware_matches_token_ids():
    ws = workers(0, 0)
    policy = make_policy("cache_aware")
    ids = list(range(100, 200))
    owner = policy.pick(ws, tuple(ids))
    owner.in_flight = 1
    assert policy.pick(ws, tuple([*ids[:90], 7, 7])) is owner


def test_unknown_policy_lists_supported():
    with pytest.raises(
        ValueError, match="Supported: random, round_robin, power_of_two, cache_aware"
    ):
        make_policy("fastest")
    assert set(POLICIES) == {"random", "round_robin", "power_of_two", "cache_aware"}


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"text": "hi"}, "hi"),
        ({"text": ["a", "b"]}, "a"),
        ({"input_ids": [1, 2]}, (1, 2)),
        ({"input_ids": [[1, 2], [3]]}, (1, 2)),
        ({"prompt": "p"}, "p"),
        ({"messages": [{"role": "user", "content": "m"}]}, "m"),
        ({}, None),
    ],
)
def test_request_key_is_the_prompt(body, key):
    assert request_key(body) == key


def _random_prompts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "delta", "omega", "tango", "kilo", "lima", "echo", "zulu", "nova"]
    return [" ".join(rng.choice(words) for _ in range(40)) for _ in range(n)]


def test_cache_aware_spreads_prompts_without_a_shared_prefix_evenly():
    """Each request finishes before the next (loads tie at 0): the ties must not all go
    to one worker, as they did when an unmatched prompt went to min(load)'s first."""
    ws = workers(0, 0)
    policy = make_policy("cache_aware", random.Random(0))
    picks = [policy.pick(ws, p).url for p in _random_prompts(40)]
    share = max(picks.count(w.url) for w in ws) / len(picks)
    assert share <= 0.6, f"one worker got {share:.0%} of 40 unrelated prompts"


def test_cache_aware_defaults_are_sgl_routers():
    policy = CacheAwarePolicy()
    assert (policy.cache_threshold, policy.balance_abs, policy.balance_rel) == (0.3, 64, 1.5), (
        "sgl-router's defaults (cache_threshold 0.3, balance_abs_threshold 64, "
        "balance_rel_threshold 1.5): users tune pdcore with the numbers they know"
    )


def test_cache_aware_unmatched_prompt_goes_to_the_worker_with_least_cached_text():
    ws = workers(0, 0)
    policy = make_policy("cache_aware")
    policy.pick(ws, "x" * 300)  # one worker now holds 300 cached characters
    holder = next(w for w in ws if policy.tree.size(w.url) == 300)
    other = ws[1] if holder is ws[0] else ws[0]
    assert policy.pick(ws, "y" * 50) is other, "a fresh prompt went to the fuller worker"


def test_cache_aware_shared_prefix_sticks_under_random_suffixes():
    ws = workers(0, 0)
    policy = make_policy("cache_aware", random.Random(0))
    system = "You are a careful assistant who answers in one sentence. " * 4
    picks = set()
    for suffix in _random_prompts(20):
        w = policy.pick(ws, system + suffix[:40])
        w.in_flight += 1  # all still running: the owner grows busier, under the thresholds
        picks.add(w.url)
    assert len(picks) == 1, f"prompts sharing a long prefix were split over {picks}"


def test_make_policy_passes_the_thresholds_to_cache_aware_only():
    policy = make_policy("cache_aware", cache_threshold=0.8, balance_abs=5, balance_rel=2.0)
    assert (policy.cache_threshold, policy.balance_abs, policy.balance_rel) == (0.8, 5, 2.0)
    assert make_policy("round_robin", cache_threshold=0.8).name == "round_robin"
