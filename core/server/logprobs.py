"""Logprobs in the shapes SGLang and OpenAI clients parse.

The engine sends, per output token, its logprob and (if asked) the top-k
``(token_id, logprob)`` pairs; these helpers render a slice ``[start, end)`` of a
request's tokens, so streaming chunks carry only their new tokens.
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
    if state.input.top_logprobs_num > 0:
        out["output_top_logprobs"] = [
            [[lp, tid, text(tid)] for tid, lp in step] for step in state.top_logprobs
        ]
    return out


def completion_logprobs(tm, state: RequestState, start: int, end: int, offset: int) -> dict:
    """OpenAI completions ``logprobs``: parallel lists; ``offset``: text offset of ``start``."""
    tokens, offsets = [], []
    for tid in state.output_ids[start:end]:
        piece = tm.token_text(tid)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
    top = None
    if state.input.top_logprobs_num > 0:
        top = [{tm.token_text(t): lp for t, lp in step} for step in state.top_logprobs[start:end]]
    return {
        "tokens": tokens,
        "token_logprobs": state.logprobs[start:end],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(tm, state: RequestState, start: int, end: int) -> dict:
    """OpenAI chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    tops = state.top_logprobs[start:end] if state.input.top_logprobs_num > 0 else []
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
