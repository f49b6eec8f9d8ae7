"""Streaming HTTP clients: SGLang's native ``/generate`` and OpenAI ``/v1/completions``.

Each request records when its chunks arrived (``time.perf_counter``), so TTFT and
inter-token latency are measured where a user would see them: at the client, after
the router. A failed request is a result with its error text, never an exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from pdcore.benchserve.datasets import RequestSpec
from pdcore.errors import PdcoreError

# As SGLang's bench_serving: long benchmarks must not be cut by a client timeout.
REQUEST_TIMEOUT_S = 6 * 3600
INFO_TIMEOUT_S = 10.0
ERROR_TEXT_MAX = 500


class ServerError(PdcoreError):
    """The server or router cannot be reached or does not answer like one."""


@dataclass
class RequestResult:
    """What one request produced; times are ``perf_counter`` seconds."""

    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_len: int = 0
    requested_output_len: int = 0
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    # (arrival time, output tokens it carried) per streamed chunk with tokens
    chunks: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ClientOptions:
    backend: str  # "sglang" (native /generate) or "openai" (/v1/completions)
    base_url: str
    model: str | None = None
    ignore_eos: bool = True
    extra_body: dict = field(default_factory=dict)


def new_session() -> aiohttp.ClientSession:
    """One session for the whole run; no connection cap (the load generator decides
    concurrency, not aiohttp's default pool of 100)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def send(session: aiohttp.ClientSession, opts: ClientOptions, spec: RequestSpec):
    """Run one request to completion; a ``RequestResult`` whether it worked or not."""
    result = RequestResult(prompt_len=spec.prompt_len, requested_output_len=spec.output_len)
    if opts.backend == "openai":
        url, body, parse = f"{opts.base_url}/v1/completions", _completion_body(opts, spec), _Openai
    else:
        url, body, parse = f"{opts.base_url}/generate", _generate_body(opts, spec), _Native
    parser = parse(result)
    result.start = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {_error_text(await resp.text())}"
                return result
            finished = False
            async for data, arrived in _sse_data(resp):
                if data == "[DONE]":
                    finished = True
                    break
                event = json.loads(data)
                if isinstance(event, dict) and "error" in event:
                    result.error = _error_text(json.dumps(event))
                    return result
                parser.event(event, arrived)
        result.latency = time.perf_counter() - result.start
        parser.finish()
        if not finished:
            result.success = False
            result.error = "the stream ended before 'data: [DONE]' (connection cut?)"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return result


def _generate_body(opts: ClientOptions, spec: RequestSpec) -> dict:
    sampling = {"max_new_tokens": spec.output_len, "temperature": 0.0}
    sampling["ignore_eos"] = opts.ignore_eos
    body = {"sampling_params": sampling, "stream": True}
    body["input_ids" if isinstance(spec.prompt, list) else "text"] = spec.prompt
    return {**body, **opts.extra_body}


def _completion_body(opts: ClientOptions, spec: RequestSpec) -> dict:
    body = {
        "model": opts.model,
        "prompt": spec.prompt,
        "max_tokens": spec.output_len,
        "temperature": 0.0,
        "ignore_eos": opts.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return {**body, **opts.extra_body}


async def _sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, float]]:
    """``data:`` payloads with the time their bytes arrived; any line length (native
    streaming events are cumulative and outgrow aiohttp's line limit)."""
    buffer = b""
    async for block in resp.content.iter_any():
        arrived = time.perf_counter()
        buffer += block
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                yield line[5:].strip().decode("utf-8"), arrived


def _error_text(text: str) -> str:
    """The message of a JSON error body (``{"error": {"message": ...}}``), else the text."""
    try:
        body = json.loads(text)
        message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
        text = str(message)
    except (ValueError, KeyError, TypeError):
        pass
    text = text.strip()
    return text if len(text) <= ERROR_TEXT_MAX else text[:ERROR_TEXT_MAX] + "..."


class _Native:
    """``/generate`` events carry the cumulative ``output_ids``; a chunk of k new tokens
    adds k inter-token gaps of (gap / k), as SGLang's bench_serving does."""

    def __init__(self, result: RequestResult):
        self.r = result
        self.tokens = 0
        self.last = 0.0

    def event(self, event: dict, arrived: float) -> None:
        meta = event.get("meta_info", {})
        count = meta.get("completion_tokens", len(event.get("output_ids", ())))
        if "prompt_tokens" in meta:
            self.r.prompt_len = meta["prompt_tokens"]
        new = count - self.tokens
        if new <= 0:
            return
        if self.tokens == 0:
            self.r.ttft = arrived - self.r.start
        else:
            self.r.itl.extend([(arrived - self.last) / new] * new)
        self.r.chunks.append((arrived, new))
        self.tokens, self.last = count, arrived

    def finish(self) -> None:
        self.r.output_len = self.tokens
        self.r.success = self.tokens > 0
        if not self.r.success:
            self.r.error = "the stream ended without any output token"


class _Openai:
    """Completion chunks carry text, not token counts: ITL is the gap between chunks,
    the token count comes from the final ``usage`` chunk."""

    def __init__(self, result: RequestResult):
        self.r = result
        self.times: list[float] = []
        self.usage: dict | None = None

    def event(self, event: dict, arrived: float) -> None:
        if event.get("usage"):
            self.usage = event["usage"]
        if any(c.get("text") for c in event.get("choices", ())):
            if self.times:
                self.r.itl.append(arrived - self.times[-1])
            else:
                self.r.ttft = arrived - self.r.start
            self.times.append(arrived)

    def finish(self) -> None:
        tokens = self.usage.get("completion_tokens") if self.usage else None
        tokens = len(self.times) if tokens is None else tokens
        if self.usage and "prompt_tokens" in self.usage:
            self.r.prompt_len = self.usage["prompt_tokens"]
        self.r.output_len = tokens
        self.r.chunks = [(t, tokens / len(self.times)) for t in self.times]
        self.r.success = bool(self.times)
        if not self.r.success:
            self.r.error = "the stream ended without any output text"


async def server_info(session: aiohttp.ClientSession, base_url: str) -> dict:
    """``/get_model_info`` (SGLang, pdcore) or, failing that, ``/v1/models`` (any OpenAI
    server), as ``{"model_path", "tokenizer_path", "served_model_name", "vocab_size"}``
    with what the server tells. Raises ``ServerError`` when nothing answers."""
    timeout = aiohttp.ClientTimeout(total=INFO_TIMEOUT_S)
    info: dict = {}
    for path in ("/get_model_info", "/v1/models"):
        try:
            async with session.get(base_url + path, timeout=timeout) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = str(e) or type(e).__name__
            raise ServerError(
                f"cannot reach {base_url} (GET {path}): {reason}. "
                "Is the server or router running there? (--base-url)"
            ) from None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            continue
        if path == "/get_model_info":
            info.update(body)
        else:
            models = body.get("data") or [{}]
            info.setdefault("served_model_name", models[0].get("id"))
            info.setdefault("model_path", models[0].get("root"))
        if info.get("served_model_name"):
            return info
    if not info:
        raise ServerError(
            f"{base_url} answers neither /get_model_info nor /v1/models; "
            "is --base-url a pdcore, SGLang or OpenAI-compatible server?"
        )
    return info
