"""OpenAI request bodies -> engine inputs (model check, prompts, sampling)."""

from __future__ import annotations

from pdcore.sampling_params import MAX_TOP_LOGPROBS, SamplingParams
from pdcore.server.errors import RequestError
from pdcore.server.protocol import ChatCompletionRequest, CompletionRequest, _OpenAISampling
from pdcore.server.request_state import GenerateInput

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
TEXT_PART_TYPES = ("text", "input_text")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_RENAMES = (("max_new_tokens", "max_tokens"), ("min_new_tokens", "min_tokens"))


def check_model(tm, name: str | None) -> None:
    """Any name is served, as SGLang does (routers send "unknown" for none); under
    ``--strict-model-name`` only the served name, the model path or its folder name
    and ``default`` are, and any other is a 404 (OpenAI's and vLLM's answer)."""
    if name is None or not tm.server_args.strict_model_name:
        return
    path = tm.model_path
    known = {tm.served_model_name, path, path.rstrip("/").rsplit("/", 1)[-1], "default"}
    if name not in known:
        raise RequestError(
            f"The model {name!r} does not exist; this server serves {tm.served_model_name!r} "
            "(--strict-model-name)",
            404,
        )


def sampling_params(tm, req: _OpenAISampling, default_max: int) -> tuple[SamplingParams, bool]:
    """OpenAI names onto ``SamplingParams``; also whether max tokens was given."""
    max_tokens = req.max_completion_tokens
    if max_tokens is None:
        max_tokens = req.max_tokens
    raw = {
        "max_new_tokens": default_max if max_tokens is None else max_tokens,
        "min_new_tokens": req.min_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "seed": req.seed,
        "stop": req.stop,
        "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens,
        "n": req.n,
    }
    try:
        params = SamplingParams.from_dict(raw)
    except (ValueError, TypeError) as e:
        message = str(e)
        for ours, theirs in _RENAMES:
            message = message.replace(ours, theirs)
        raise RequestError(message) from None
    return params, max_tokens is not None


def completion_prompts(tm, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """Token ids and text (for ``echo``) of each prompt in ``prompt``."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise RequestError("prompt is empty")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    ids, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids.append(tm.encode(p))
            texts.append(p)
        else:
            ids.append(tm.check_ids(list(p), "prompt"))
            texts.append(tm.decode(p) if req.echo else "")
    return ids, texts


def prompt_top(req: CompletionRequest) -> int | None:
    """The prompt logprobs' top-k a completions request asks for (None: none): vLLM's
    ``prompt_logprobs``, or ``echo`` with ``logprobs`` (OpenAI's echoed prompt scores)."""
    top = req.prompt_logprobs
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise RequestError(f"prompt_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {top}")
    if req.echo and req.logprobs is not None:
        return top or 0
    return top


def chat_prompt(tm, req: ChatCompletionRequest) -> list[int]:
    if not req.messages:
        raise RequestError("messages is empty")
    messages = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        messages.append({"role": m.role, "content": _content_text(m.content, i)})
    return tm.chat_ids(messages)


def _content_text(content, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if part.type not in TEXT_PART_TYPES:
            raise RequestError(f"{where}: only text parts are supported, got type {part.type!r}")
        if not isinstance(part.text, str):
            raise RequestError(f"{where}: a text part needs a 'text' string")
        texts.append(part.text)
    return "\n".join(texts)


def expand(
    prompts: list[list[int]],
    params: SamplingParams,
    max_given: bool,
    request_id: str,
    req: _OpenAISampling,
    top_logprobs: int | None,
    prompt_top: int | None = None,
) -> list[GenerateInput]:
    """One input per (prompt, choice); rids ``<id>`` or ``<id>-<choice index>``.

    ``top_logprobs``: output logprobs with that top-k (None: none); ``prompt_top``:
    prompt logprobs from the first token on, with that top-k (None: none).
    """
    n, total = params.n, len(prompts) * params.n
    return [
        GenerateInput(
            input_ids=ids,
            params=SamplingParams(**params.to_dict()),
            rid=request_id if total == 1 else f"{request_id}-{p * n + i}",
            return_logprob=top_logprobs is not None or prompt_top is not None,
            top_logprobs_num=top_logprobs or 0,
            logprob_start_len=-1 if prompt_top is None else 0,
            prompt_top_logprobs_num=prompt_top or 0,
            stop_trim=not (req.no_stop_trim or req.include_stop_str_in_output),
            max_tokens_given=max_given,
            # One room per request: PD serves single-choice, single-prompt requests.
            bootstrap_host=req.bootstrap_host if total == 1 else None,
            bootstrap_port=req.bootstrap_port if total == 1 else None,
            bootstrap_room=req.bootstrap_room if total == 1 else None,
            data_parallel_rank=req.data_parallel_rank,
        )
        for p, ids in enumerate(prompts)
        for i in range(n)
    ]
