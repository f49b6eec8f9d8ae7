"""What the router adds to a request body in PD mode, and what it refuses."""

from __future__ import annotations

import copy
import random
import uuid

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions")


class BadRequest(Exception):
    """A body the router answers 400 to itself (malformed, or not servable in PD mode)."""


# Servers under DP attention send a PD request to DP rank ``room % dp_size``. A room
# that is ``r`` modulo lcm(1..16) lands on DP rank ``r`` for every dp_size <= 16 (> r).
DP_ROOM_MODULUS = 720720


def new_room(rng: random.Random, dp_rank: int | None = None) -> int:
    """A random 63-bit room id; 0 is reserved (servers read it as 'no room').

    ``dp_rank``: the client pinned ``data_parallel_rank``; the room then agrees
    with it on both servers (any DP size up to 16).
    """
    if dp_rank is None:
        return rng.getrandbits(63) or 1
    return dp_rank + DP_ROOM_MODULUS * rng.randrange(1, (1 << 63) // DP_ROOM_MODULUS)


def pinned_dp_rank(body: dict) -> int | None:
    """The client's ``data_parallel_rank`` when it is one the room can carry."""
    rank = body.get("data_parallel_rank")
    if isinstance(rank, int) and not isinstance(rank, bool) and 0 <= rank < DP_ROOM_MODULUS:
        return rank
    return None  # absent, or malformed: the servers answer 400 naming the field


def batch_size(path: str, body: dict) -> int | None:
    """Prompts in a batched ``/generate`` body; None for a single prompt."""
    if path != "/generate":
        return None
    text, ids = body.get("text"), body.get("input_ids")
    if isinstance(text, list):
        return len(text)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return len(ids)
    return None


def check_pd_body(path: str, body: dict) -> None:
    """Refuse what the servers cannot serve in PD mode, with a message naming why."""
    if path in OPENAI_PATHS:
        n = body.get("n", 1)
        if isinstance(n, int) and n > 1:
            raise BadRequest("n > 1 is not supported in PD disaggregation mode; send n=1")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
            raise BadRequest(
                "several prompts in one /v1/completions request are not supported in PD "
                "disaggregation mode; send one prompt per request (or a batched /generate)"
            )
        return
    params = body.get("sampling_params")
    for p in params if isinstance(params, list) else [params]:
        if isinstance(p, dict) and isinstance(p.get("n"), int) and p["n"] > 1:
            raise BadRequest("sampling_params.n > 1 is not supported in PD disaggregation mode")


def inject(
    path: str, body: dict, host: str, port: int, rng: random.Random, rid: str | None = None
) -> dict:
    """A copy of ``body`` with bootstrap host/port/room (lists for a batch) and a rid.

    A client's own ``rid`` is kept; otherwise ``rid`` (or a fresh one) is set, so
    the router can abort the request on either server by id.
    """
    out = copy.copy(body)
    count = batch_size(path, body)
    rank = pinned_dp_rank(body)
    if count is None:
        room = new_room(rng, rank)
        out.update(bootstrap_host=host, bootstrap_port=port, bootstrap_room=room)
    else:
        out.update(
            bootstrap_host=[host] * count,
            bootstrap_port=[port] * count,
            bootstrap_room=[new_room(rng, rank) for _ in range(count)],
        )
    if out.get("rid") is None:
        base = rid or f"router-{uuid.uuid4().hex}"
        out["rid"] = base if count is None else [f"{base}-{i}" for i in range(count)]
    return out


def rids_of(body: dict) -> list[str]:
    rid = body.get("rid")
    if isinstance(rid, list):
        return [r for r in rid if isinstance(r, str)]
    return [rid] if isinstance(rid, str) else []
