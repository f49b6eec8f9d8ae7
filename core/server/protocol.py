"""Request bodies of the SGLang and OpenAI APIs (pydantic v2).

Models are lenient where real clients are: unknown fields are kept and ignored
(SGLang and OpenAI SDKs send many we do not implement), numbers may arrive as
JSON strings. They are strict where a wrong type would otherwise reach the
engine: booleans are not numbers, prompts are strings or token-id lists, and no
string anywhere in a body may hold a lone surrogate (``reject_lone_surrogates``).
Semantic checks (ranges, lengths, vocabulary) happen in ``requests.py`` and
``SamplingParams.validate``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
TokenIds = list[Int]
Stop = str | list[str]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


def reject_lone_surrogates(data: Any) -> Any:
    """``data`` unchanged, or ``ValueError`` if a string in it (keys included) holds a
    lone surrogate: JSON can escape one (``"\\ud800"``) but UTF-8 cannot encode it,
    so it would fail in the tokenizer, the engine's msgpack or the response."""
    stack = [data]
    while stack:  # no recursion: the body may be nested deeper than Python's stack
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as e:
                    char = f"U+{ord(item[e.start]):04X}"
                    message = f"a string holds a lone surrogate ({char}); send valid Unicode"
                    raise ValueError(message) from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


class _Request(_Lenient):
    """A whole request body: lenient, but every string in it must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return reject_lone_surrogates(data)


class StreamOptions(_Lenient):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class GenerateRequest(_Request):
    """SGLang ``/generate``: one prompt or a batch (lists), text or token ids."""

    text: str | list[str] | None = None
    input_ids: TokenIds | list[TokenIds] | None = None
    sampling_params: dict | list[dict] | None = None
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool | list[bool] = False
    top_logprobs_num: Int | list[Int] = 0
    logprob_start_len: Int | list[Int] | None = -1
    return_text_in_logprobs: bool = False
    stream_options: StreamOptions | None = None
    model: str | None = None
    bootstrap_host: str | list[str] | None = None
    bootstrap_port: Int | list[Int] | None = None
    bootstrap_room: Int | list[Int] | None = None
    # DP attention: serve on this DP rank (SGLang's field; routers pin ranks with it)
    data_parallel_rank: Int | list[Int] | None = None


class _OpenAISampling(_Request):
    """Fields shared by completions and chat, incl. SGLang's extensions."""

    model: str | None = None
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    n: Int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: Int | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    user: str | None = None
    # SGLang / vLLM extensions
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None
    min_tokens: Int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[Int] | None = None
    skip_special_tokens: bool | None = None
    no_stop_trim: bool = False
    include_stop_str_in_output: bool = False
    # PD disaggregation (added by the router, which also names the request so
    # that it can abort it on either server by ``rid``, as SGLang's router does)
    bootstrap_host: str | None = None
    bootstrap_port: Int | None = None
    bootstrap_room: Int | None = None
    rid: str | None = None
    data_parallel_rank: Int | None = None  # DP attention: serve on this DP rank


class CompletionRequest(_OpenAISampling):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Int | None = None
    echo: bool = False
    prompt_logprobs: Int | None = None  # vLLM's: top-k per prompt token (choices[].prompt_logprobs)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: Int | None = None


class AbortRequest(_Request):
    rid: str = ""
    abort_all: bool = False


class TokenizeRequest(_Request):
    """SGLang's ``/tokenize`` (``prompt``: one string or a batch), plus vLLM's
    ``messages`` (rendered with the chat template, as for a chat request)."""

    model: str | None = None
    prompt: str | list[str] | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Request):
    """SGLang's ``/detokenize``: one id list or a batch of them."""

    model: str | None = None
    tokens: TokenIds | list[TokenIds]
    skip_special_tokens: bool = True
