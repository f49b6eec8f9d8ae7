"""SSE framing and client-disconnect handling shared by the API handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from pdcore.server.errors import RequestError, error_body
from pdcore.server.request_group import RequestGroup

SSE_DONE = "data: [DONE]\n\n"
DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The HTTP client went away while its request was running."""


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def wait_or_abort(request: Request, group: RequestGroup, wait: Callable) -> None:
    """Await ``wait()`` while polling for a client disconnect; on one, abort the group.

    Uvicorn does not cancel a handler whose client left, so without this a
    non-streaming request would keep generating (and holding KV pages) for no one.
    Raises the group's first error (engine error, engine death) after aborting the
    rest of the group.
    """
    task = asyncio.ensure_future(wait())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                task.result()
                break
            if await request.is_disconnected():
                raise ClientGone()
    except BaseException:
        task.cancel()
        group.abort_unfinished()
        raise
    error = group.first_error()
    if error is not None:
        group.abort_unfinished()
        raise error


async def stream(
    request: Request, group: RequestGroup, chunks: Callable[[], AsyncIterator[str]]
) -> StreamingResponse:
    """Wait for the first tokens (so early errors keep their status code), then stream.

    Errors after the first byte go out as an SSE error event; a client that
    disconnects closes the generator, whose ``finally`` aborts the engine requests.
    """
    await wait_or_abort(request, group, group.wait_started)
    return StreamingResponse(
        _guarded(group, chunks()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _guarded(group: RequestGroup, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield chunk
    except RequestError as e:
        yield sse(error_body(e.message, e.status))
        yield SSE_DONE
    finally:
        group.abort_unfinished()
