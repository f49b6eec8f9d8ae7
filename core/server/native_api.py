"""SGLang's native endpoints besides ``/generate``: health, info, cache, abort."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import pdcore
from pdcore.config import masked
from pdcore.server.errors import RequestError
from pdcore.server.generate_api import handle_generate
from pdcore.server.probe import generate_probe
from pdcore.server.protocol import AbortRequest, GenerateRequest


def native_router(tm, server_info: dict | None = None) -> APIRouter:
    """Routes for ``tm``; ``server_info``: the resolved server args (default: ``tm``'s)."""
    router = APIRouter()
    info = dict(server_info) if server_info else _args_dict(tm.server_args)
    # The names as served, not as given: sgl-router lists served_model_name (else
    # model_path) in its /v1/models, and a missing one shows as "unknown" there.
    info.update(_model_names(tm))

    @router.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        return await handle_generate(tm, body, request)

    @router.api_route("/health", methods=["GET", "POST"])
    async def health():
        if not tm.healthy:
            raise RequestError(f"engine unavailable: {tm.dead_reason}", 503)
        return Response(status_code=200)

    @router.api_route("/health_generate", methods=["GET", "POST"])
    async def health_generate():
        """Generate end to end (PD servers alone, on the fake path); 503 if it fails."""
        await generate_probe(tm, "health")
        return Response(status_code=200)

    @router.get("/get_model_info")
    @router.get("/model_info")
    async def model_info():
        return {
            **_model_names(tm),
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "context_length": tm.context_length,
            "vocab_size": tm.vocab_size,
        }

    @router.get("/get_server_info")
    @router.get("/server_info")
    async def server_info_route():
        out = {**info, "version": pdcore.__version__, "context_length": tm.context_length}
        try:
            stats = await tm.get_stats()
        except RequestError as e:
            out["engine"] = {"alive": False, "error": e.message}
            return out
        out["engine"] = {"alive": True, "num_running_reqs": stats.num_running}
        out["engine"]["num_waiting_reqs"] = stats.num_waiting
        out["kv_cache"] = _kv_cache(stats)
        if stats.disaggregation is not None:
            out["disaggregation"] = stats.disaggregation
        if tm.dp_size > 1:  # DP attention: the sums above, rank by rank
            out["data_parallel"] = [
                {
                    "dp_rank": rank,
                    "num_running_reqs": part.num_running,
                    "num_waiting_reqs": part.num_waiting,
                    "kv_cache": _kv_cache(part),
                }
                for rank, part in enumerate(tm.rank_stats)
            ]
        return out

    @router.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        ok, message = await tm.flush_cache()
        return PlainTextResponse(message, status_code=200 if ok else 400)

    @router.post("/abort_request")
    async def abort_request(body: AbortRequest):
        count = tm.abort_all() if body.abort_all else tm.abort(body.rid) if body.rid else 0
        return JSONResponse({"aborted": count})

    return router


def _model_names(tm) -> dict:
    """SGLang's names: ``tokenizer_path`` is None without a tokenizer."""
    tokenizer = tm.server_args.tokenizer_path or tm.model_path
    return {
        "model_path": tm.model_path,
        "tokenizer_path": tokenizer if tm.has_tokenizer else None,
        "served_model_name": tm.served_model_name,
    }


def _kv_cache(stats) -> dict:
    return {
        "page_size": stats.page_size,
        "total_pages": stats.total_pages,
        "free_pages": stats.free_pages,
        "used_pages": stats.used_pages,
        "cached_pages": stats.cached_pages,
    }


def _args_dict(args) -> dict:
    return masked(dataclasses.asdict(args))
