"""SGLang's ``/generate``: single or batched prompts, text or token ids, SSE or JSON.

Output follows SGLang: ``{"text", "output_ids", "meta_info"}`` per sequence
(cumulative while streaming; no ``text`` under ``--skip-tokenizer-init``), a
list for batches or ``n>1``, logprobs as ``[logprob, token_id, text|None]``
triples.
"""

from __future__ import annotations

from fastapi import Request

from pdcore.sampling_params import SamplingParams
from pdcore.server.errors import RequestError
from pdcore.server.http_utils import SSE_DONE, sse, stream, wait_or_abort
from pdcore.server.logprobs import sglang_input_logprobs, sglang_output_logprobs
from pdcore.server.protocol import GenerateRequest
from pdcore.server.request_state import GenerateInput, RequestState


async def handle_generate(tm, body: GenerateRequest, request: Request):
    inputs, batched = build_inputs(tm, body)
    group = tm.submit(inputs)
    many = batched or len(inputs) > 1
    with_text = body.return_text_in_logprobs

    if body.stream:

        async def chunks():
            async for i, state in group.updates():
                if state.error is not None:
                    raise state.error
                out = format_output(tm, state, with_text)
                if many:
                    out["index"] = i
                yield sse(out)
            yield SSE_DONE

        return await stream(request, group, chunks)
    await wait_or_abort(request, group, group.wait_all)
    outputs = [format_output(tm, s, with_text) for s in group.states]
    return outputs if many else outputs[0]


def format_output(tm, state: RequestState, with_text: bool) -> dict:
    meta = {
        "id": state.rid,
        "finish_reason": state.finish_reason,
        "prompt_tokens": state.prompt_tokens,
        "completion_tokens": state.completion_tokens,
        "cached_tokens": state.cached_tokens,
        "e2e_latency": round(state.e2e_latency, 6),
    }
    if state.pd_local_prefill:
        meta["pd_local_prefill"] = True
    if state.input.return_logprob:
        meta.update(sglang_input_logprobs(tm, state, with_text))
        meta.update(sglang_output_logprobs(tm, state, with_text))
    if not tm.has_tokenizer:  # --skip-tokenizer-init: no "text", as in SGLang
        return {"output_ids": list(state.output_ids), "meta_info": meta}
    return {"text": state.visible_text, "output_ids": list(state.output_ids), "meta_info": meta}


def build_inputs(tm, body: GenerateRequest) -> tuple[list[GenerateInput], bool]:
    """Expand prompts x ``n`` into engine inputs; rids ``<rid>`` or ``<rid>-<i>``."""
    if (body.text is None) == (body.input_ids is None):
        raise RequestError("provide exactly one of 'text' or 'input_ids'")
    if body.return_text_in_logprobs:
        tm.require_tokenizer("'return_text_in_logprobs'")
    if body.text is not None:
        batched = isinstance(body.text, list)
        texts = body.text if batched else [body.text]
        if not texts:
            raise RequestError("'text' is an empty list")
        prompts = [tm.encode(t) for t in texts]
    else:
        batched = bool(body.input_ids) and isinstance(body.input_ids[0], list)
        prompts = body.input_ids if batched else [body.input_ids]
        for ids in prompts:
            tm.check_ids(ids)
    count = len(prompts)
    sampling = _per_prompt(body.sampling_params, count, "sampling_params", default={})
    rids = _per_prompt(body.rid, count, "rid", default=None)
    logprob = _per_prompt(body.return_logprob, count, "return_logprob", default=False)
    top_n = _per_prompt(body.top_logprobs_num, count, "top_logprobs_num", default=0)
    starts = _per_prompt(body.logprob_start_len, count, "logprob_start_len", default=-1)
    routing = {  # PD's room and prefill address, DP attention's rank
        name: _per_prompt(getattr(body, name), count, name, default=None)
        for name in ("bootstrap_host", "bootstrap_port", "bootstrap_room", "data_parallel_rank")
    }
    inputs = []
    for p, ids in enumerate(prompts):
        raw = sampling[p] or {}
        params = _params(raw)
        base = rids[p] or tm.new_id()
        for i in range(params.n):
            inputs.append(
                GenerateInput(
                    input_ids=list(ids),
                    params=_params(raw) if i else params,
                    rid=base if params.n == 1 else f"{base}-{i}",
                    return_logprob=bool(logprob[p]),
                    top_logprobs_num=top_n[p],
                    logprob_start_len=starts[p],
                    stop_trim=not raw.get("no_stop_trim", False),
                    max_tokens_given=raw.get("max_new_tokens") is not None,
                    **{name: values[p] for name, values in routing.items()},
                )
            )
    return inputs, batched


def _params(raw: dict) -> SamplingParams:
    if not isinstance(raw, dict):
        raise RequestError("sampling_params must be an object")
    no_trim = raw.get("no_stop_trim")  # ours, not SamplingParams': checked here
    if no_trim is not None and not isinstance(no_trim, bool):
        raise RequestError(f"sampling_params: no_stop_trim must be a boolean, got {no_trim!r}")
    try:
        return SamplingParams.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise RequestError(f"sampling_params: {e}") from None


def _per_prompt(value, count: int, name: str, default) -> list:
    """A per-request field given once (shared) or as a list (one per prompt)."""
    if value is None:
        return [default] * count
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise RequestError(f"'{name}' has {len(value)} entries for {count} prompts")
    return value
