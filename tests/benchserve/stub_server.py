"""A scripted streaming server in a thread, shaped like pdcore's HTTP API.

``/generate`` streams cumulative ``output_ids`` events, ``chunk_sizes`` tokens at a
time (cycled); ``/v1/completions`` streams one text delta per token and a final
``usage`` chunk. ``fail(body)`` may return ``(status, message)`` for an HTTP error,
or ``(0, message)`` for an error event after the first streamed chunk; ``cut=True``
ends every stream after its first chunk without ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading

from aiohttp import web
from e2e.server_process import free_port

VOCAB = 500
MODEL = "stub-model"


class StubServer:
    def __init__(self, chunk_sizes=(1,), fail=None, model_info: bool = True, cut: bool = False):
        self.chunk_sizes, self.fail, self.model_info = chunk_sizes, fail, model_info
        self.cut = cut
        self.bodies: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application()
        app.router.add_get("/get_model_info", self._info)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10), "stub server did not start"

    def _serve(self, started: threading.Event) -> None:
        async def start():
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _info(self, request):
        if not self.model_info:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        info = {"model_path": "stub", "tokenizer_path": "/nonexistent/stub-tokenizer"}
        return web.json_response({**info, "served_model_name": MODEL, "vocab_size": VOCAB})

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [{"id": MODEL, "root": "stub"}]})

    async def _generate(self, request):
        body = await request.json()
        prompt = body.get("input_ids") or body["text"].split()
        wanted = body["sampling_params"]["max_new_tokens"]

        def event(ids):
            meta = {"prompt_tokens": len(prompt), "completion_tokens": len(ids)}
            return {"text": " ".join(map(str, ids)), "output_ids": ids, "meta_info": meta}

        ids: list[int] = []
        events = []
        for size in itertools.cycle(self.chunk_sizes):
            ids = ids + list(range(len(ids), min(len(ids) + size, wanted)))
            events.append(event(ids))
            if len(ids) == wanted:
                break
        return await self._stream(request, body, events)

    async def _completions(self, request):
        body = await request.json()
        wanted = body["max_tokens"]
        base = {"id": "cmpl-1", "object": "text_completion", "model": body["model"]}
        events = [{**base, "choices": [{"index": 0, "text": f"t{i} "}]} for i in range(wanted)]
        events.append({**base, "choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
        usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": wanted}
        events.append({**base, "choices": [], "usage": usage})
        return await self._stream(request, body, events)

    async def _stream(self, request, body: dict, events: list[dict]):
        self.bodies.append(body)
        failure = self.fail(body) if self.fail else None
        if failure and failure[0]:
            status, message = failure
            return web.json_response({"error": {"message": message}}, status=status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate(events):
            if failure and i == 1:
                event = {"error": {"message": failure[1], "code": 500}}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.002)
            if failure and i == 1:
                break
            if self.cut:
                break
        if not self.cut:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
