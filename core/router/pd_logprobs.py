"""Prompt logprobs in PD mode: prefill computes them, the router puts them in decode's answer.

A PD decode server never runs the prompt through its model, so it answers with
empty prompt logprobs (``meta_info.input_token_logprobs: []``, an echo's
prompt part empty, ``prompt_logprobs: null``); prefill's answer (always read
whole) has them. As SGLang's router does for ``/generate``, prefill's
``input_token_logprobs`` go in front of decode's, in the whole answer or in
every streamed event (``/generate`` events are cumulative); ``input_top_logprobs``
too. For ``/v1/completions`` (echo + logprobs, vLLM's ``prompt_logprobs``) the
prompt part of prefill's choice goes in front of decode's, once in a stream.
Decode's output offsets already start after the prompt's token texts.
"""

from __future__ import annotations

import json

INPUT_KEYS = ("input_token_logprobs", "input_top_logprobs")
COMPLETION_KEYS = ("tokens", "token_logprobs", "text_offset", "top_logprobs")


def wanted(path: str, body: dict) -> bool:
    """The request asks for prompt logprobs, which only prefill computes."""
    if path == "/generate":
        flag = body.get("return_logprob")
        return any(flag) if isinstance(flag, list) else bool(flag)
    if path == "/v1/completions":
        echoed = bool(body.get("echo")) and body.get("logprobs") is not None
        return echoed or body.get("prompt_logprobs") is not None
    return False


def merge(prefill, decode):
    """Decode's whole answer with prefill's prompt logprobs in it (a batch: per prompt)."""
    if isinstance(prefill, list) and isinstance(decode, list):
        return [merge(p, d) for p, d in zip(prefill, decode, strict=False)]
    if not isinstance(prefill, dict) or not isinstance(decode, dict):
        return decode
    if "meta_info" in decode:
        _merge_meta(prefill, decode)
    elif "choices" in decode:
        _merge_choices(prefill, decode)
    return decode


class EventMerger:
    """Rewrites decode's SSE events: prefill's prompt logprobs into each ``/generate``
    event, into the first ``/v1/completions`` event that has logprobs."""

    def __init__(self, prefill: dict | list):
        self.prefill = prefill
        self.completion_done = False

    def block(self, data: bytes) -> bytes:
        """``data``: whole SSE events; returned with their JSON payloads merged."""
        out = []
        for event in data.split(b"\n\n"):
            out.append(self._event(event))
        return b"\n\n".join(out)

    def _event(self, event: bytes) -> bytes:
        stripped = event.strip()
        if not stripped.startswith(b"data: ") or stripped == b"data: [DONE]":
            return event
        try:
            payload = json.loads(stripped[6:])
        except ValueError:
            return event
        if not isinstance(payload, dict):
            return event
        if "meta_info" in payload:
            prefill = self.prefill
            if isinstance(prefill, list):  # a batch: events carry their prompt's index
                index = payload.get("index", 0)
                prefill = prefill[index] if isinstance(index, int) and index < len(prefill) else {}
            _merge_meta(prefill, payload)
        elif not self.completion_done and _has_logprobs(payload):
            _merge_choices(self.prefill, payload)
            self.completion_done = True
        else:
            return event
        return b"data: " + json.dumps(payload).encode()


def _merge_meta(prefill: dict, decode: dict) -> None:
    theirs, meta = prefill.get("meta_info"), decode.get("meta_info")
    if not isinstance(theirs, dict) or not isinstance(meta, dict):
        return
    if meta.get("pd_local_prefill"):
        return  # decode prefilled this prompt itself: its own logprobs stand
    for key in INPUT_KEYS:
        if isinstance(theirs.get(key), list):
            meta[key] = theirs[key] + list(meta.get(key) or [])


def _merge_choices(prefill: dict, decode: dict) -> None:
    theirs, ours = prefill.get("choices"), decode.get("choices")
    if not isinstance(theirs, list) or not isinstance(ours, list):
        return
    usage = prefill.get("usage") or {}
    prompt_len = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    for p, d in zip(theirs, ours, strict=False):
        if not isinstance(p, dict) or not isinstance(d, dict):
            continue
        if d.get("prompt_logprobs") is None and p.get("prompt_logprobs") is not None:
            d["prompt_logprobs"] = p["prompt_logprobs"]
        plp, dlp = p.get("logprobs"), d.get("logprobs")
        if not isinstance(plp, dict) or not isinstance(dlp, dict) or prompt_len is None:
            continue
        for key in COMPLETION_KEYS:
            head = plp.get(key)
            if isinstance(head, list):
                dlp[key] = head[:prompt_len] + list(dlp.get(key) or [])


def _has_logprobs(payload: dict) -> bool:
    choices = payload.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("logprobs") is not None for c in choices
    )
