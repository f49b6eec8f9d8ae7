"""Sampling parameters of one request, validated once at the HTTP boundary.

Field names follow SGLang's ``sampling_params`` (``max_new_tokens``, ``stop``,
``stop_token_ids``, ``ignore_eos``, ...); the OpenAI front end maps its own names
onto these. ``validate`` raises ``ValueError`` with a message naming the field,
which the server turns into HTTP 400.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: whole vocabulary
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @classmethod
    def from_dict(cls, d: dict | None) -> SamplingParams:
        """Build from a request's dict; unknown keys are ignored (SGLang sends many)."""
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        if isinstance(known.get("stop"), str):
            known["stop"] = [known["stop"]]
        params = cls(**known)
        params.validate()
        return params

    def validate(self, vocab_size: int | None = None) -> None:
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ValueError(f"{name} {what}, got {getattr(self, name)!r}")

        need(
            _is_int(self.max_new_tokens) and self.max_new_tokens >= 0,
            "max_new_tokens",
            "must be a non-negative integer",
        )
        need(
            _is_int(self.min_new_tokens) and 0 <= self.min_new_tokens,
            "min_new_tokens",
            "must be a non-negative integer",
        )
        need(
            self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            f"must not exceed max_new_tokens ({self.max_new_tokens})",
        )
        need(
            _is_num(self.temperature) and 0 <= self.temperature <= 100,
            "temperature",
            "must be in [0, 100]",
        )
        need(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(
            _is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1),
            "top_k",
            "must be -1 (disabled) or a positive integer",
        )
        need(_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        need(
            _is_num(self.repetition_penalty) and 0 < self.repetition_penalty <= 10,
            "repetition_penalty",
            "must be in (0, 10]",
        )
        need(
            _is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
            "frequency_penalty",
            "must be in [-2, 2]",
        )
        need(
            _is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
            "presence_penalty",
            "must be in [-2, 2]",
        )
        need(
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
            "seed",
            "must be a non-negative integer",
        )
        need(
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "must be a non-empty string or a list of them",
        )
        need(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"allows at most {MAX_STOP_STRINGS}")
        need(
            isinstance(self.stop_token_ids, list)
            and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be a list of non-negative integers",
        )
        if vocab_size is not None:
            need(
                all(t < vocab_size for t in self.stop_token_ids),
                "stop_token_ids",
                f"must be below the vocabulary size {vocab_size}",
            )
        need(isinstance(self.ignore_eos, bool), "ignore_eos", "must be a boolean")
        need(isinstance(self.skip_special_tokens, bool), "skip_special_tokens", "must be a boolean")
        need(_is_int(self.n) and 1 <= self.n <= 16, "n", "must be an integer in 1..16")

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
