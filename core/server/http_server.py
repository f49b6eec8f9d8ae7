"""The FastAPI app: SGLang + OpenAI routes, JSON errors, API key, body limit, ``/metrics``.

``create_app(tokenizer_manager)`` is all a server needs; the manager's lifetime
follows the app's (lifespan). Bad input is always a 400 JSON error in OpenAI's
shape; an unexpected exception is a 500 that leaves the server serving.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

import pdcore
from pdcore.api_key import ApiKeyMiddleware
from pdcore.body_limit import BodyLimitMiddleware
from pdcore.server.errors import RequestError, error_body
from pdcore.server.http_utils import ClientGone
from pdcore.server.native_api import native_router
from pdcore.server.openai_api import openai_router
from pdcore.server.openapi_doc import install as install_openapi_doc
from pdcore.server.probe import generate_probe
from pdcore.server.profile_api import profile_router
from pdcore.server.tokenize_api import tokenize_router

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's "client closed request"; nobody reads it


def create_app(
    tokenizer_manager, *, server_info: dict | None = None, warmup: bool = False
) -> FastAPI:
    """The HTTP app around ``tokenizer_manager``; ``server_info``: resolved server args.

    ``warmup``: generate once before accepting requests, so the first client
    does not pay for lazy initialisation (SGLang does the same).
    """
    tm = tokenizer_manager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await tm.start()
        if warmup:
            await _warm_up(tm)
        try:
            yield
        finally:
            await tm.stop()

    app = FastAPI(
        title="pdcore", version=pdcore.__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.tokenizer_manager = tm
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=tm.server_args.max_payload_size)
    if tm.server_args.api_key:  # added last: outermost, so 401 comes before anything else
        app.add_middleware(ApiKeyMiddleware, key=tm.server_args.api_key)
    app.include_router(native_router(tm, server_info))
    app.include_router(openai_router(tm))
    app.include_router(profile_router(tm))
    app.include_router(tokenize_router(tm))
    install_openapi_doc(app)

    @app.get("/metrics")
    async def metrics():
        if tm.healthy:
            try:
                await tm.get_stats()  # refreshes the engine gauges
            except RequestError as e:
                logger.warning("metrics without engine stats: %s", e.message)
        return Response(tm.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _warm_up(tm) -> None:
    start = time.perf_counter()
    try:
        await generate_probe(tm, "warmup")
    except RequestError as e:  # the server still starts; /health_generate will say more
        logger.error("warm-up failed: %s", e.message)
        return
    logger.info("warm-up generation took %.2fs", time.perf_counter() - start)


def _json_error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_request, exc: RequestError):
        return _json_error(exc.message, exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return _json_error(validation_message(exc.errors()), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        # Keeps the exception's headers: a 405 must say ``Allow`` (RFC 9110).
        return _json_error(str(exc.detail), exc.status_code, exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_request, _exc):
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        logger.exception("unhandled error")
        return _json_error(f"internal error: {type(exc).__name__}: {exc}", 500)


def validation_message(errors) -> str:
    """Pydantic errors as one line, ``field: problem; ...`` (union member tags dropped)."""
    parts: list[str] = []
    for err in errors:
        if err.get("type") == "json_invalid":
            return f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if not _is_type_tag(x))
        part = f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
        if part not in parts:
            parts.append(part)
    return "invalid request: " + "; ".join(parts[:3])


def _is_type_tag(loc_item) -> bool:
    """Union errors name the member tried ("str", "list[int]", "function-before[...]")."""
    if not isinstance(loc_item, str):
        return False
    return loc_item == "body" or "[" in loc_item or loc_item in ("str", "int", "float", "bool")
