"""Messages between the HTTP front end and the engine process (msgpack over ZMQ).

The front end tokenizes and validates; the engine only sees token ids. Outputs
stream back per scheduler step as incremental token ids (the front end
detokenizes). Structs are plain msgspec types: safe to decode, no pickle.
"""

from __future__ import annotations

import msgspec


class GenerateReq(msgspec.Struct, tag=True):
    rid: str
    input_ids: list[int]
    sampling: dict  # SamplingParams.to_dict(), already validated
    return_logprob: bool = False
    top_logprobs_num: int = 0
    # PD disaggregation (SGLang's fields): where prefill's bootstrap server is, and
    # the room id both sides of this request share.
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None


class AbortReq(msgspec.Struct, tag=True):
    rid: str


class FlushCacheReq(msgspec.Struct, tag=True):
    pass


class StatsReq(msgspec.Struct, tag=True):
    """Ask the engine for its load and KV accounting (answered with ``EngineStats``)."""

    token: int = 0


class TokenOut(msgspec.Struct, tag=True):
    """New tokens of one request since its last ``TokenOut``.

    ``logprobs``: one per new token; ``top_logprobs``: per new token a list of
    ``[token_id, logprob]`` pairs. ``finish_reason``: None while running, else
    ``{"type": "stop"|"length"|"abort", "matched": token id or str or None,
    "message": str}``.
    """

    rid: str
    token_ids: list[int]
    logprobs: list[float] = []
    top_logprobs: list[list[list[float]]] = []
    finish_reason: dict | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


class EngineStats(msgspec.Struct, tag=True):
    token: int
    num_running: int
    num_waiting: int
    total_pages: int
    free_pages: int
    used_pages: int
    cached_pages: int
    page_size: int
    flushed: bool = False
    disaggregation: dict | None = None  # KV manager stats in prefill/decode mode


class EngineError(msgspec.Struct, tag=True):
    rid: str
    message: str
    status: int = 400


ToEngine = GenerateReq | AbortReq | FlushCacheReq | StatsReq
FromEngine = TokenOut | EngineStats | EngineError

_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_from_engine = msgspec.msgpack.Decoder(list[FromEngine])


def encode(obj) -> bytes:
    return _encoder.encode(obj)


def decode_to_engine(data: bytes) -> ToEngine:
    return _to_engine.decode(data)


def decode_from_engine(data: bytes) -> list[FromEngine]:
    """The engine sends a list of outputs per step (one ZMQ message)."""
    return _from_engine.decode(data)
