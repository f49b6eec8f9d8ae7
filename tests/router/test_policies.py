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
