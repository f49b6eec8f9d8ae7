"""What the router adds to PD request bodies, and what it refuses before sending."""

from __future__ import annotations

import random

import pytest

from pdcore.router import pd_body


def inject(body, path="/generate"):
    return pd_body.inject(path, body, "10.0.0.1", 8998, random.Random(0))


def test_single_prompt_gets_scalar_bootstrap_fields_and_a_rid():
    out = inject({"text": "hi"})
    assert out["bootstrap_host"] == "10.0.0.1" and out["bootstrap_port"] == 8998
    assert 0 < out["bootstrap_room"] < 2**63
    assert isinstance(out["rid"], str) and out["rid"]


def test_client_rid_is_kept_and_body_not_mutated():
    body = {"input_ids": [1, 2], "rid": "mine"}
    out = inject(body)
    assert out["rid"] == "mine"
    assert "bootstrap_room" not in body, "the client's body was modified"


@pytest.mark.parametrize("body", [{"text": ["a", "b", "c"]}, {"input_ids": [[1], [2, 3], [4]]}])
def test_batched_generate_gets_lists_of_the_same_length(body):
    out = inject(body)
    for name in ("bootstrap_host", "bootstrap_port", "bootstrap_room", "rid"):
        assert isinstance(out[name], list) and len(out[name]) == 3, (name, out[name])
    assert len(set(out["bootstrap_room"])) == 3, "rooms of one batch must differ"
    assert len(set(out["rid"])) == 3


def test_each_injection_draws_a_new_room_and_rid():
    rng = random.Random(0)
    a = pd_body.inject("/generate", {"text": "x"}, "h", 1, rng)
    b = pd_body.inject("/generate", {"text": "x"}, "h", 1, rng)
    assert a["bootstrap_room"] != b["bootstrap_room"] and a["rid"] != b["rid"]


def test_openai_bodies_get_scalar_fields():
    out = inject({"prompt": ["one"]}, "/v1/completions")
    assert isinstance(out["bootstrap_room"], int)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"messages": [], "n": 2}, "n > 1"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "several prompts"),
        ("/generate", {"text": "a", "sampling_params": {"n": 3}}, "sampling_params.n"),
    ],
)
def test_what_pd_servers_cannot_serve_is_refused(path, body, message):
    with pytest.raises(pd_body.BadRequest, match=message):
        pd_body.check_pd_body(path, body)


def test_a_pinned_data_parallel_rank_picks_a_room_every_dp_size_agrees_with():
    """Servers under DP attention route a PD request to DP rank room % dp_size and refuse
    a data_parallel_rank that disagrees: the router's room must carry the client's pin."""
    rng = random.Random(3)
    for rank in (0, 1, 3, 7, 15):
        out = pd_body.inject(
            "/generate", {"input_ids": [1], "data_parallel_rank": rank}, "h", 1, rng
        )
        room = out["bootstrap_room"]
        assert 0 < room < 1 << 63, room
        for dp_size in range(rank + 1, 17):
            assert room % dp_size == rank, f"room {room} % {dp_size} != pinned rank {rank}"
    body = {"input_ids": [[1], [2]], "data_parallel_rank": 1}
    batch = pd_body.inject("/generate", body, "h", 1, rng)
    assert all(r % 2 == 1 and r % 8 == 1 for r in batch["bootstrap_room"])
    pin = {"input_ids": [1], "data_parallel_rank": 2}
    rooms = {pd_body.inject("/generate", pin, "h", 1, rng)["bootstrap_room"] for _ in range(200)}
    assert len(rooms) == 200, "pinned rooms must still be random (no collisions)"


def test_a_malformed_pin_is_left_for_the_server_to_refuse():
    rng = random.Random(4)
    for bad in (-1, "1", True, 1.5):
        out = pd_body.inject(
            "/generate", {"input_ids": [1], "data_parallel_rank": bad}, "h", 1, rng
        )
        assert out["data_parallel_rank"] == bad  # forwarded unchanged: the server's 400 names it
