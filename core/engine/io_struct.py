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
    # SGLang's: prompt logprobs from this prompt position on (-1: the last prompt token,
    # i.e. none computed); with return_logprob only.
    logprob_start_len: int = -1
    # PD disaggregation (SGLang's fields): where prefill's bootstrap server is, and
    # the room id both sides of this request share.
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None
    # The server's own warm-up or health probe: take the fake transfer path
    # (``disaggregation.fake``). Set only by the front end's probe code; no request
    # body field maps to it.
    fake_transfer: bool = False


class AbortReq(msgspec.Struct, tag=True):
    rid: str


class FlushCacheReq(msgspec.Struct, tag=True):
    pass


class StatsReq(msgspec.Struct, tag=True):
    """Ask the engine for its load and KV accounting (answered with ``EngineStats``)."""

    token: int = 0


class StartProfileReq(msgspec.Struct, tag=True):
    """Start the torch profiler in the engine (answered with ``ProfileReply``).

    ``activities``: None for the device's default (CPU, plus GPU on CUDA);
    ``num_steps``: stop by itself after this many model steps (None: at
    ``StopProfileReq``); ``prefix``: put in front of the trace file names.
    """

    token: int = 0
    output_dir: str = "/tmp"
    num_steps: int | None = None
    activities: list[str] | None = None
    with_stack: bool = False
    record_shapes: bool = False
    prefix: str = ""


class StopProfileReq(msgspec.Struct, tag=True):
    """Stop the profiler and write its traces (or collect a finished ``num_steps`` run)."""

    token: int = 0


class ProfileReply(msgspec.Struct, tag=True):
    """The engine's answer to a profile request; ``status`` is the HTTP status to give.

    ``files``: the trace files written (stop only); ``role``: the server's
    --disaggregation-mode (prefill, decode or null), also part of every file name.
    """

    token: int
    success: bool
    message: str
    status: int = 200
    role: str = "null"
    files: list[str] = []
    output_dir: str = ""
    activities: list[str] = []
    num_steps: int | None = None
    steps: int = 0


class TokenOut(msgspec.Struct, tag=True):
    """New tokens of one request since its last ``TokenOut``.

    ``logprobs``: one per new token; ``top_logprobs``: per new token a list of
    ``[token_id, logprob]`` pairs. ``finish_reason``: None while running, else
    ``{"type": "stop"|"length"|"abort", "matched": token id or str or None,
    "message": str}``. ``pd_local_prefill``: a PD decode prefilled the request
    itself, or a PD prefill dropped its room because decode did.
    """

    rid: str
    token_ids: list[int]
    logprobs: list[float] = []
    top_logprobs: list[list[list[float]]] = []
    finish_reason: dict | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    pd_local_prefill: bool = False
    # Prompt logprobs, once (with the first output), when this engine computed the
    # prompt: per prompt token from logprob_start_len on, its logprob (None for the
    # first), top-k ``[token_id, logprob]`` pairs (None for the first; empty list when
    # no top-k was asked) and rank (1: the most likely). Empty on a PD decode server:
    # prefill reports them.
    input_logprobs: list[float | None] = []
    input_top_logprobs: list[list[list[float]] | None] = []
    input_ranks: list[int | None] = []


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
    pd_metrics: dict | None = None  # PDMetrics.snapshot(): PD histograms for /metrics


class EngineError(msgspec.Struct, tag=True):
    rid: str
    message: str
    status: int = 400


ToEngine = GenerateReq | AbortReq | FlushCacheReq | StatsReq | StartProfileReq | StopProfileReq
FromEngine = TokenOut | EngineStats | EngineError | ProfileReply

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
