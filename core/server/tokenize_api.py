"""``/tokenize`` and ``/detokenize`` (also under ``/v1``), in SGLang's shapes.

``POST /tokenize`` ``{model?, prompt: str | [str], add_special_tokens=true}`` (or
vLLM's ``messages`` instead of ``prompt``) answers ``{tokens, count,
max_model_len}``, lists for a batch; ``POST /detokenize`` ``{model?, tokens:
[int] | [[int]], skip_special_tokens=true}`` answers ``{text}``. Both need the
tokenizer: under ``--skip-tokenizer-init`` they are a 400 naming the flag.
"""

from __future__ import annotations

from fastapi import APIRouter

from pdcore.server import openai_inputs as inputs
from pdcore.server.errors import RequestError
from pdcore.server.protocol import DetokenizeRequest, TokenizeRequest


def tokenize_router(tm) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize")
    @router.post("/v1/tokenize")
    async def tokenize(body: TokenizeRequest):
        tm.require_tokenizer("/tokenize")
        inputs.check_model(tm, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise RequestError("provide exactly one of 'prompt' or 'messages'")
        if body.messages is not None:
            tokens = inputs.chat_prompt(tm, body)
        elif isinstance(body.prompt, str):
            tokens = tm.tokenize(body.prompt, body.add_special_tokens)
        else:
            batch = [tm.tokenize(p, body.add_special_tokens) for p in body.prompt]
            counts = [len(ids) for ids in batch]
            return {"tokens": batch, "count": counts, "max_model_len": tm.context_length}
        return {"tokens": tokens, "count": len(tokens), "max_model_len": tm.context_length}

    @router.post("/detokenize")
    @router.post("/v1/detokenize")
    async def detokenize(body: DetokenizeRequest):
        tm.require_tokenizer("/detokenize")
        inputs.check_model(tm, body.model)
        batched = bool(body.tokens) and isinstance(body.tokens[0], list)
        batch = body.tokens if batched else [body.tokens]
        for i, ids in enumerate(batch):
            if ids:  # an empty list decodes to ""
                tm.check_ids(ids, f"tokens[{i}]" if batched else "tokens")
        texts = [tm.decode(ids, body.skip_special_tokens) for ids in batch]
        return {"text": texts if batched else texts[0]}

    return router
