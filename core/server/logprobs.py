"""Logprobs in the shapes SGLang, OpenAI and vLLM clients parse.

The engine sends, per output token, its logprob and (if asked) the top-k
``(token_id, logprob)`` pairs; these helpers render a slice ``[start, end)`` of a
request's tokens, so streaming chunks carry only their new tokens. Prompt
logprobs come once, for the prompt tokens from ``logprob_start_len`` on, the
first entry None (SGLang's rule: nothing here scores the token at the start).
The engine's top-k may be larger than an output asks for (vLLM's
``prompt_logprobs`` asks its own): each view cuts its own.
"""

from __future__ import annotations

from pdcore.server.request_state import RequestState


def sglang_output_logprobs(tm, state: RequestState, with_text: bool) -> dict:
    """``output_token_logprobs`` as ``[logprob, token_id, text|None]`` triples (+ top-k)."""

    def text(tid: int):
        return tm.token_text(tid) if with_text else None

    out = {
        "output_token_logprobs": [
            [lp, tid, text(tid)] for lp, tid in zip(state.logprobs, state.output_ids, strict=False)
        ]
    }
    n = state.input.top_logprobs_num
    if n > 0:
        out["output_top_logprobs"] = [
            [[lp, tid, text(tid)] for tid, lp in step[:n]] for step in state.top_logprobs
        ]
    return out


def sglang_input_logprobs(tm, state: RequestState, with_text: bool) -> dict:
    """``input_token_logprobs`` (+ ``input_top_logprobs``) as SGLang's ``meta_info`` has
    them; empty lists where this server did not compute the prompt (PD decode: the
    router puts prefill's in front, as SGLang's router does)."""

    def text(tid: int):
        return tm.token_text(tid) if with_text else None

    ids = state.input.input_ids[state.logprob_start :]
    out = {
        "input_token_logprobs": [
            [lp, tid, text(tid)] for lp, tid in zip(state.input_logprobs, ids, strict=False)
        ]
    }
    n = state.input.top_logprobs_num
    if n > 0:
        out["input_top_logprobs"] = [
            None if step is None else [[lp, tid, text(tid)] for tid, lp in step[:n]]
            for step in state.input_top_logprobs
        ]
    return out


def prompt_text_len(tm, state: RequestState) -> int:
    """Characters of the prompt's token texts: where output offsets start after an echo
    with logprobs (the prompt's token offsets run from 0 over the same texts)."""
    return sum(len(tm.token_text(t)) for t in state.input.input_ids)


def completion_prompt_logprobs(tm, state: RequestState) -> dict:
    """The echoed prompt's part of OpenAI completions ``logprobs`` (offsets from 0);
    empty lists when this server did not compute the prompt (PD decode)."""
    tokens, offsets, offset = [], [], 0
    ids = state.input.input_ids if state.input_logprobs else []
    for tid in ids:
        piece = tm.token_text(tid)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
    n = state.input.top_logprobs_num
    top = None
    if n > 0:
        top = [
            None if step is None else {tm.token_text(t): lp for t, lp in step[:n]}
            for step in state.input_top_logprobs
        ]
    return {
        "tokens": tokens,
        "token_logprobs": list(state.input_logprobs),
        "top_logprobs": top,
        "text_offset": offsets,
    }


def vllm_prompt_logprobs(tm, state: RequestState) -> list | None:
    """vLLM's ``prompt_logprobs``: per prompt token None (the first) or ``{token_id:
    {logprob, rank, decoded_token}}`` with the token itself and the top-k; None when
    this server did not compute the prompt (PD decode)."""
    if not state.input_logprobs:
        return None
    n = state.input.prompt_top_logprobs_num
    out: list = [None]
    ids = state.input.input_ids
    for i in range(1, len(state.input_logprobs)):
        tid = ids[i]
        entry = {tid: _vllm_entry(tm, tid, state.input_logprobs[i], state.input_ranks[i])}
        step = state.input_top_logprobs[i] if state.input_top_logprobs else None
        for rank, (t, lp) in enumerate((step or [])[:n], start=1):
            entry.setdefault(t, _vllm_entry(tm, t, lp, rank))
        out.append(entry)
    return out


def _vllm_entry(tm, token_id: int, logprob: float, rank: int | None) -> dict:
    return {"logprob": logprob, "rank": rank, "decoded_token": tm.token_text(token_id)}


def completion_logprobs(tm, state: RequestState, start: int, end: int, offset: int) -> dict:
    """OpenAI completions ``logprobs``: parallel lists; ``offset``: text offset of ``start``."""
    tokens, offsets = [], []
    for tid in state.output_ids[start:end]:
        piece = tm.token_text(tid)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
    top = None
    n = state.input.top_logprobs_num
    if n > 0:
        top = [
            {tm.token_text(t): lp for t, lp in step[:n]} for step in state.top_logprobs[start:end]
        ]
    return {
        "tokens": tokens,
        "token_logprobs": state.logprobs[start:end],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(tm, state: RequestState, start: int, end: int) -> dict:
    """OpenAI chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    n = state.input.top_logprobs_num
    tops = [step[:n] for step in state.top_logprobs[start:end]] if n > 0 else []
    for i, (tid, lp) in enumerate(
        zip(state.output_ids[start:end], state.logprobs[start:end], strict=False)
    ):
        entry = _chat_entry(tm, tid, lp)
        entry["top_logprobs"] = [_chat_entry(tm, t, v) for t, v in tops[i]] if tops else []
        content.append(entry)
    return {"content": content}


def _chat_entry(tm, token_id: int, logprob: float) -> dict:
    piece = tm.token_text(token_id)
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}
