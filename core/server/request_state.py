"""Per-request state in the front end: tokens in, visible text and logprobs out.

The receive loop applies each ``TokenOut`` as it arrives (detokenize, look for
stop strings, record timing) so a stop string aborts the engine-side request
at once, even while the HTTP client is slow to read. HTTP handlers only read
the accumulated state when notified.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pdcore.engine.io_struct import TokenOut
from pdcore.sampling_params import SamplingParams
from pdcore.server.errors import RequestError
from pdcore.server.stop_strings import find_stop, partial_stop_len, scan_start


@dataclass
class GenerateInput:
    """One sequence to generate: what the engine needs plus front-end options."""

    input_ids: list[int]
    params: SamplingParams
    rid: str = ""
    return_logprob: bool = False
    top_logprobs_num: int = 0
    # Prompt logprobs (with return_logprob): SGLang's start position (-1: the last
    # prompt token only), and vLLM's ``prompt_logprobs`` top-k count when it differs.
    logprob_start_len: int = -1
    prompt_top_logprobs_num: int = 0
    stop_trim: bool = True  # False: keep a matched stop string/token in the text
    max_tokens_given: bool = True  # False: cap max_new_tokens at the context left
    bootstrap_host: str | None = None  # PD: prefill's bootstrap server and the room id
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None
    data_parallel_rank: int | None = None  # DP attention: pin the request to this DP rank
    # The server's own probe (``server.probe``) on the fake transfer path; never
    # set from a request body.
    fake_transfer: bool = False


class RequestState:
    """Accumulated output of one engine request (one choice)."""

    def __init__(self, inp: GenerateInput, detokenizer, notify: asyncio.Event):
        self.input = inp
        self.rid = inp.rid
        self._detok = detokenizer
        self._notify = notify
        self.created = time.perf_counter()
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.finish_time: float | None = None
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []
        # Prompt logprobs from logprob_start_len on (first entry None); empty until the
        # engine sends them, and on a PD decode server (prefill reports them).
        self.input_logprobs: list[float | None] = []
        self.input_top_logprobs: list[list[tuple[int, float]] | None] = []
        self.input_ranks: list[int | None] = []
        self.text = ""
        self.visible_len = 0
        self.cached_tokens = 0
        self.pd_local_prefill = False  # PD: decode prefilled it, or prefill dropped it for that
        self.finish_reason: dict | None = None
        self.error: RequestError | None = None
        self.dirty = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def visible_text(self) -> str:
        return self.text[: self.visible_len]

    @property
    def prompt_tokens(self) -> int:
        return len(self.input.input_ids)

    @property
    def logprob_start(self) -> int:
        """The prompt position the input logprobs start at (-1 made the last one)."""
        start = self.input.logprob_start_len
        return len(self.input.input_ids) - 1 if start < 0 else start

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def e2e_latency(self) -> float:
        return (self.finish_time or time.perf_counter()) - self.created

    def apply(self, out: TokenOut, now: float) -> bool:
        """Take one step's output; True when a stop string just finished the request."""
        if self.finished:
            return False
        ids = list(out.token_ids)
        reason = out.finish_reason
        if ids:
            self.first_token_time = self.first_token_time or now
            self.last_token_time = now
        self.output_ids.extend(ids)
        if self.input.return_logprob:
            if out.input_logprobs:
                self.input_logprobs = list(out.input_logprobs)
                self.input_ranks = list(out.input_ranks)
                self.input_top_logprobs = [
                    None if step is None else [(int(t), float(lp)) for t, lp in step]
                    for step in out.input_top_logprobs
                ]
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(
                [(int(t), float(lp)) for t, lp in step] for step in out.top_logprobs
            )
        self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
        self.pd_local_prefill = self.pd_local_prefill or out.pd_local_prefill
        shown = ids
        if reason and self._trims_token(reason, ids):
            shown = ids[:-1]
        previous = len(self.text)
        if shown:
            self.text += self._detok.step(shown)
        if reason is not None:
            self.text += self._detok.flush()
        stopped = self._check_stop_strings(previous)
        if reason is not None and not stopped:
            self._finish(self._engine_reason(reason))
        elif not self.finished:
            stops = self.input.params.stop
            self.visible_len = max(
                self.visible_len, len(self.text) - partial_stop_len(self.text, stops)
            )
        self._touch()
        return stopped

    def fail(self, error: RequestError) -> None:
        if not self.finished:
            self.error = error
            self.finish_time = time.perf_counter()
            self._touch()

    def abort(self, message: str) -> None:
        if not self.finished:
            self._finish({"type": "abort", "message": message})
            self._touch()

    def _trims_token(self, reason: dict, ids: list[int]) -> bool:
        matched = reason.get("matched")
        return (
            self.input.stop_trim
            and reason.get("type") == "stop"
            and isinstance(matched, int)
            and bool(ids)
            and ids[-1] == matched
        )

    def _check_stop_strings(self, previous_len: int) -> bool:
        stops = self.input.params.stop
        if not stops or len(self.text) == previous_len:
            return False
        hit = find_stop(self.text, stops, scan_start(previous_len, stops))
        if hit is None:
            return False
        pos, stop = hit
        self.text = self.text[: pos + (0 if self.input.stop_trim else len(stop))]
        self._finish({"type": "stop", "matched": stop})
        return True

    def _engine_reason(self, reason: dict) -> dict:
        out = {k: v for k, v in reason.items() if v is not None and v != ""}
        out.setdefault("type", "stop")
        if out["type"] == "length":
            out["length"] = self.completion_tokens
        return out

    def _finish(self, reason: dict) -> None:
        self.finish_reason = reason
        self.visible_len = len(self.text)
        self.finish_time = time.perf_counter()

    def _touch(self) -> None:
        self.dirty = True
        self._notify.set()
