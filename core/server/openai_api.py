"""OpenAI-compatible ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``.

Choices are engine requests of one group (``n`` per prompt); streaming sends
per-choice deltas of the visible text (stop-string tails held back), then a
finish chunk, an optional ``usage`` chunk (``stream_options.include_usage``)
and ``data: [DONE]``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from pdcore.server import openai_inputs as inputs
from pdcore.server.errors import RequestError
from pdcore.server.http_utils import SSE_DONE, sse, stream, wait_or_abort
from pdcore.server.logprobs import (
    chat_logprobs,
    completion_logprobs,
    completion_prompt_logprobs,
    prompt_text_len,
    vllm_prompt_logprobs,
)
from pdcore.server.protocol import ChatCompletionRequest, CompletionRequest
from pdcore.server.request_state import RequestState


def openai_router(tm) -> APIRouter:
    router = APIRouter()
    created = int(time.time())

    @router.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": tm.served_model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "pdcore",
                    "root": tm.model_path,
                    "max_model_len": tm.context_length,
                }
            ],
        }

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        tm.require_tokenizer("/v1/completions (its output is text)")
        inputs.check_model(tm, body.model)
        prompts, texts = inputs.completion_prompts(tm, body)
        params, given = inputs.sampling_params(tm, body, inputs.COMPLETIONS_DEFAULT_MAX_TOKENS)
        prompt_top = inputs.prompt_top(body)
        rid = body.rid or f"cmpl-{tm.new_id()}"
        group = tm.submit(
            inputs.expand(prompts, params, given, rid, body, body.logprobs, prompt_top)
        )
        view = _View(tm, rid, "text_completion", body, params.n, body.logprobs is not None)
        view.vllm_prompt_logprobs = body.prompt_logprobs is not None
        if body.echo:
            view.prefixes = [texts[i // params.n] for i in range(len(group.states))]
        if body.stream:
            return await stream(request, group, lambda: view.stream(group, chat=False))
        await wait_or_abort(request, group, group.wait_all)
        return view.response(group, chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        tm.require_tokenizer("/v1/chat/completions")
        inputs.check_model(tm, body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise RequestError("top_logprobs requires logprobs to be true")
        prompt = inputs.chat_prompt(tm, body)
        params, given = inputs.sampling_params(tm, body, tm.context_length)
        top = (body.top_logprobs or 0) if body.logprobs else None
        rid = body.rid or f"chatcmpl-{tm.new_id()}"
        group = tm.submit(inputs.expand([prompt], params, given, rid, body, top))
        view = _View(tm, rid, "chat.completion", body, params.n, top is not None)
        if body.stream:
            return await stream(request, group, lambda: view.stream(group, chat=True))
        await wait_or_abort(request, group, group.wait_all)
        return view.response(group, chat=True)

    return router


class _View:
    """Renders one group's states as OpenAI responses or stream chunks."""

    def __init__(self, tm, rid: str, obj: str, body, n: int, logprobs: bool):
        self.tm = tm
        model = body.model or tm.served_model_name
        self.base = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
        self.logprobs = logprobs
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.n = n
        self.prefixes: list[str] | None = None  # echo: each choice's prompt text
        self.vllm_prompt_logprobs = False  # add vLLM's choices[].prompt_logprobs

    def response(self, group, chat: bool) -> dict:
        choices = []
        for i, state in enumerate(group.states):
            choice = {"index": i}
            if chat:
                choice["message"] = {"role": "assistant", "content": state.visible_text}
                choice["logprobs"] = self._chat_lp(state, 0)
            else:
                prefix = self.prefixes[i] if self.prefixes else ""
                choice["text"] = prefix + state.visible_text
                offset = prompt_text_len(self.tm, state) if prefix and self.logprobs else 0
                choice["logprobs"] = self._echo_lp(state, self._completion_lp(state, 0, offset))
                if self.vllm_prompt_logprobs:
                    choice["prompt_logprobs"] = vllm_prompt_logprobs(self.tm, state)
            choices.append({**choice, **_finish(state)})
        return {**self.base, "choices": choices, "usage": self.usage(group.states)}

    async def stream(self, group, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {**self.base, "object": obj}
        if self.include_usage:
            base["usage"] = None
        sent = [0] * len(group.states)
        tokens = [0] * len(group.states)
        offsets = [0] * len(group.states)
        if chat:
            for i in range(len(group.states)):
                delta = {"role": "assistant", "content": ""}
                yield sse({**base, "choices": [_chunk_choice(i, delta, None, None)]})
        elif self.prefixes and not self.logprobs:
            for i, prefix in enumerate(self.prefixes):
                yield sse({**base, "choices": [_text_choice(i, prefix, None, None)]})
                offsets[i] = len(prefix)
        echoed = [not self.prefixes or not self.logprobs] * len(group.states)
        async for i, state in group.updates():
            if state.error is not None:
                raise state.error
            if not echoed[i]:  # the prompt's logprobs come with the first output
                echoed[i] = True
                lp = self._echo_lp(state, None)
                yield sse({**base, "choices": [_text_choice(i, self.prefixes[i], lp, None)]})
                offsets[i] = prompt_text_len(self.tm, state)
            text = state.visible_text[sent[i] :]
            sent[i] += len(text)
            lp, end = None, len(state.logprobs)
            if self.logprobs and end > tokens[i]:
                if chat:
                    lp = self._chat_lp(state, tokens[i])
                else:
                    lp = self._completion_lp(state, tokens[i], offsets[i])
                    offsets[i] += sum(len(t) for t in lp["tokens"])
                tokens[i] = end
            if text or lp:
                choice = _chunk_choice(i, {"content": text}, lp, None) if chat else None
                choice = choice or _text_choice(i, text, lp, None)
                yield sse({**base, "choices": [choice]})
            if state.finished:
                finish = _finish(state)
                choice = (
                    _chunk_choice(i, {}, None, finish)
                    if chat
                    else _text_choice(i, "", None, finish)
                )
                yield sse({**base, "choices": [choice]})
        if self.include_usage:
            yield sse({**base, "choices": [], "usage": self.usage(group.states)})
        yield SSE_DONE

    def usage(self, states: list[RequestState]) -> dict:
        firsts = states[:: self.n]
        prompt = sum(s.prompt_tokens for s in firsts)
        completion = sum(s.completion_tokens for s in states)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(s.cached_tokens for s in firsts)},
        }

    def _chat_lp(self, state: RequestState, start: int):
        if not self.logprobs:
            return None
        return chat_logprobs(self.tm, state, start, len(state.logprobs))

    def _completion_lp(self, state: RequestState, start: int, offset: int):
        """Output logprobs from token ``start``, the first at text ``offset``."""
        if not self.logprobs:
            return None
        return completion_logprobs(self.tm, state, start, len(state.logprobs), offset)

    def _echo_lp(self, state: RequestState, outputs: dict | None) -> dict | None:
        """``outputs`` with the echoed prompt's logprobs in front (echo + logprobs only)."""
        if not (self.prefixes and self.logprobs):
            return outputs
        prompt = completion_prompt_logprobs(self.tm, state)
        if outputs is None:
            return prompt
        for key in ("tokens", "token_logprobs", "text_offset"):
            prompt[key] = prompt[key] + outputs[key]
        if prompt["top_logprobs"] is not None:
            prompt["top_logprobs"] = prompt["top_logprobs"] + (outputs["top_logprobs"] or [])
        return prompt


def _finish(state: RequestState) -> dict:
    reason = state.finish_reason or {}
    return {"finish_reason": reason.get("type"), "matched_stop": reason.get("matched")}


def _chunk_choice(i: int, delta: dict, logprobs, finish: dict | None) -> dict:
    out = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": None}
    return {**out, **(finish or {})}


def _text_choice(i: int, text: str, logprobs, finish: dict | None) -> dict:
    out = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": None}
    return {**out, **(finish or {})}
