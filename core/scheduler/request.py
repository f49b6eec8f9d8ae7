"""``Req``: one generation request as the scheduler tracks it.

A request's sequence is ``input_ids + output_ids``; ``computed_len`` of those
tokens have K/V in ``pages``. The first ``num_cached_pages`` pages belong to
the radix cache (locked through ``prefix_handle``), the rest to the request.
After a retraction the request starts over from ``computed_len == 0`` with its
generated tokens kept, so it recomputes them as prompt and continues.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from pdcore.sampling_params import SamplingParams


class ReqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_admission_clock = itertools.count(1)


def finish_reason(kind: str, matched: int | str | None = None, message: str = "") -> dict:
    """The ``TokenOut.finish_reason`` dict: type stop, length or abort."""
    return {"type": kind, "matched": matched, "message": message}


@dataclass(eq=False)
class Req:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    output_ids: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    num_cached_pages: int = 0
    prefix_handle: Any = None
    cached_tokens: int = 0  # prefix-cache hit of the first admission (reported)
    computed_len: int = 0
    status: ReqStatus = ReqStatus.WAITING
    finish_reason: dict | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[list[float]]] = field(default_factory=list)
    generator: torch.Generator | None = None  # from params.seed, made by the sampler
    sent_tokens: int = 0  # output tokens already streamed
    admit_order: int = 0
    admissions: int = 0
    # PD: decode prefilled this request itself (--disaggregation-local-prefill-threshold);
    # on prefill, the room it dropped for that reason.
    pd_local_prefill: bool = False
    # False: a fake-transfer request (``disaggregation.fake``). On decode its prompt
    # pages hold KV nobody wrote (stale data of earlier requests), so none of its
    # pages may ever enter the prefix cache, where another request would reuse them.
    cacheable: bool = True
    # Prompt logprobs (SGLang's ``logprob_start_len``, -1 already made ``len(prompt) - 1``):
    # logits at prompt position ``p`` score token ``p + 1``, so positions
    # ``[logprob_start_len, len(prompt) - 1)`` are computed; the entry of the token at
    # ``logprob_start_len`` itself is None, as SGLang reports it.
    logprob_start_len: int = -1
    input_logprobs: list[float] = field(default_factory=list)
    input_top_logprobs: list[list[list[float]]] = field(default_factory=list)
    input_ranks: list[int] = field(default_factory=list)
    input_logprobs_done: bool = False  # the whole prompt went through the model here
    input_logprobs_sent: bool = False

    def __post_init__(self) -> None:
        if self.logprob_start_len < 0:
            self.logprob_start_len = len(self.input_ids) - 1

    @property
    def wants_input_logprobs(self) -> bool:
        """Prompt logprobs are asked for and this prompt's have not been computed."""
        return self.return_logprob and not self.input_logprobs_done

    def prompt_logprob_span(self, start: int, extend: int) -> tuple[int, int]:
        """Offsets ``[lo, hi)`` within the fed tokens ``[start, start + extend)`` whose
        logits score a prompt token (``(0, 0)``: none)."""
        if not self.wants_input_logprobs:
            return 0, 0
        lo = max(start, self.logprob_start_len)
        hi = min(start + extend, len(self.input_ids) - 1)
        return (lo - start, hi - start) if lo < hi else (0, 0)

    @property
    def fill_ids(self) -> list[int]:
        """Every token of the sequence; all need K/V before the next is sampled."""
        return self.input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def remaining(self) -> int:
        """Tokens still to feed through the model before the next sample."""
        return self.seq_len - self.computed_len

    @property
    def in_prefill(self) -> bool:
        """More than one token to feed: a (chunked) prefill, not a decode step."""
        return self.remaining > 1

    def tokens(self, start: int, end: int) -> list[int]:
        """``fill_ids[start:end]`` without building the whole list (decode reads one)."""
        n_in = len(self.input_ids)
        if end <= n_in:
            return self.input_ids[start:end]
        if start >= n_in:
            return self.output_ids[start - n_in : end - n_in]
        return self.input_ids[start:] + self.output_ids[: end - n_in]

    @property
    def finished(self) -> bool:
        return self.status is ReqStatus.FINISHED

    def mark_admitted(self) -> None:
        self.status = ReqStatus.RUNNING
        self.admit_order = next(_admission_clock)
        self.admissions += 1

    def finish(self, reason: dict) -> None:
        self.status = ReqStatus.FINISHED
        self.finish_reason = reason
