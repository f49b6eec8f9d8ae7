"""The request path: pick workers, send, pass the answer through, fail over.

PD mode sends the body to a prefill P and a decode D at once (P gets a
non-streaming copy: the router only needs its status) and returns D's answer.
Whichever side fails first gets the other aborted (its connection closed and
``/abort_request`` by rid), so neither server holds KV pages for a request that
can no longer finish. Connection errors and 5xx before the client saw a byte
are retried on a new pair with a new room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass

import anyio
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pdcore.router import pd_body
from pdcore.router.health import HealthChecker
from pdcore.router.metrics import RouterMetrics
from pdcore.router.policies import Policy, request_key
from pdcore.router.workers import Worker, WorkerPool

log = logging.getLogger("pdcore.router")
TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)
DISCONNECT_POLL_S = 0.25
ABORT_TIMEOUT_S = 3.0
FORWARDED_HEADERS = ("authorization",)


def error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


class NoWorker(Exception):
    def __init__(self, role: str):
        super().__init__(role)
        self.role = role


@dataclass
class Retry:
    """An attempt failed in a way a new pair may not: which worker, and why."""

    worker: Worker
    message: str


class Proxy:
    def __init__(
        self,
        pool: WorkerPool,
        policies: dict[str, Policy],
        client: httpx.AsyncClient,
        metrics: RouterMetrics,
        checker: HealthChecker,
        pd_mode: bool,
        max_retries: int = 2,
        rng: random.Random | None = None,
    ):
        self.pool, self.policies, self.client = pool, policies, client
        self.metrics, self.checker = metrics, checker
        self.pd_mode, self.max_retries = pd_mode, max_retries
        self.rng = rng or random.Random()

    def pick(self, role: str, body: dict, exclude: set[str]) -> Worker:
        workers = self.pool.available(role, exclude)
        if not workers:
            raise NoWorker(role)
        policy = self.policies[role]
        return policy.pick(workers, request_key(body) if policy.name == "cache_aware" else None)

    async def route(self, request: Request, path: str, body: dict) -> Response:
        if self.pd_mode:
            try:
                pd_body.check_pd_body(path, body)
            except pd_body.BadRequest as e:
                return error(400, str(e))
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        exclude: set[str] = set()
        last: Retry | None = None
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self.metrics.retries.inc()
            try:
                if self.pd_mode:
                    outcome = await self._pd_attempt(request, path, body, headers, exclude)
                else:
                    outcome = await self._single_attempt(request, path, body, headers, exclude)
            except NoWorker as e:
                why = f"; last error: {last.message}" if last else ""
                return error(503, f"no healthy {e.role} worker available{why}")
            if not isinstance(outcome, Retry):
                return outcome
            last = outcome
            exclude.add(outcome.worker.url)
            log.warning("attempt %d/%d failed: %s", attempt + 1, attempts, outcome.message)
        return error(502, f"request failed after {attempts} attempts; last error: {last.message}")

    # ---- PD ---------------------------------------------------------------------

    async def _pd_attempt(self, request, path, body, headers, exclude) -> Response | Retry:
        p = self.pick("prefill", body, exclude)
        d = self.pick("decode", body, exclude)
        if p.bootstrap_port is None:
            await self.checker.refresh_info(p)
            if p.bootstrap_port is None:
                p.breaker.failure()
                return Retry(p, f"prefill {p.url}: no disaggregation_bootstrap_port known")
        sent = pd_body.inject(path, body, p.host, p.bootstrap_port, self.rng)
        p_task = _task(p, self._prefill(p, path, {**sent, "stream": False}, headers))
        d_task = _task(d, self._open(d, path, sent, headers))
        gone = asyncio.create_task(_disconnected(request))
        pending = {p_task, d_task, gone}
        try:
            while True:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                if gone in done:
                    await self._abort([(p, p_task), (d, d_task)], sent)
                    return Response(status_code=499)
                if p_task in done:
                    failed = _failure(p, p_task)
                    if failed is not None:
                        await self._abort([(d, d_task)], sent)
                        return failed
                if d_task in done:
                    failed = _failure(d, d_task)
                    if failed is not None:
                        await self._abort([(p, p_task)], sent)
                        return failed
                    return await self._answer(d, d_task.result(), p_task, sent)
        finally:
            gone.cancel()

    async def _answer(self, w: Worker, resp: httpx.Response, p_task, sent) -> Response:
        """A 2xx answer: streamed through as it comes, or whole (+ input logprobs)."""
        if _is_stream(resp):
            return self._relay(w, resp, p_task, sent)
        try:
            content = await resp.aread()
        finally:
            await self._release(w, resp)
        self._judge(w, resp.status_code)
        if p_task is not None and pd_body.wants_input_logprobs(sent):
            content = await _with_prefill_logprobs(content, p_task)
        return Response(content, resp.status_code, media_type=resp.headers.get("content-type"))

    def _relay(self, d: Worker, resp: httpx.Response, p_task, sent) -> StreamingResponse:
        """Pass SSE bytes through as they arrive; abort both sides if it did not complete."""

        async def chunks():
            completed = False
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
                completed = True
            except httpx.HTTPError as e:
                self._failed(d, "stream", e)
                message = f"{d.role} worker {d.url} lost mid-stream: {type(e).__name__}: {e}"
                err = {"error": {"message": message, "type": "service_unavailable", "code": 502}}
                yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._release(d, resp)
                    if not completed:
                        p = [] if p_task is None else [(p_task.worker, p_task)]
                        await self._abort([(d, None), *p], sent)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        media = resp.headers.get("content-type")
        return _Relay(chunks(), resp.status_code, headers, media_type=media)

    async def _prefill(self, p: Worker, path, body, headers) -> httpx.Response:
        """POST to prefill and read the whole answer; its bookkeeping.

        ``p.in_flight`` was counted by ``_task`` (at pick time); released here.
        """
        self.metrics.sent(p)
        start = time.monotonic()
        try:
            r = await self.client.post(p.url + path, json=body, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as e:
            self._failed(p, "connection", e)
            raise
        finally:
            p.in_flight -= 1
        self.metrics.observe(p, time.monotonic() - start)
        self._judge(p, r.status_code)
        return r

    # ---- one worker (non-PD, or decode's side) ----------------------------------

    async def _single_attempt(self, request, path, body, headers, exclude):
        w = self.pick("regular", body, exclude)
        task = _task(w, self._open(w, path, body, headers))
        gone = asyncio.create_task(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                await self._abort([(w, task)], body)
                return Response(status_code=499)
            failed = _failure(w, task)
            if failed is not None:
                return failed
            return await self._answer(w, task.result(), None, body)
        finally:
            gone.cancel()

    async def _open(self, w: Worker, path, body, headers) -> httpx.Response:
        """Send and wait for the headers; a 2xx body stays open for the caller to stream.

        ``w.in_flight`` was counted by ``_task`` (at pick time); ``_release`` ends it.
        """
        self.metrics.sent(w)
        req = self.client.build_request(
            "POST", w.url + path, json=body, headers=headers, timeout=TIMEOUT
        )
        try:
            resp = await self.client.send(req, stream=True)
        except BaseException as e:
            w.in_flight -= 1
            if isinstance(e, httpx.HTTPError):
                self._failed(w, "connection", e)
            raise
        if resp.status_code >= 400:  # error bodies are small: read them now
            try:
                await resp.aread()
            finally:
                await self._release(w, resp)
            self._judge(w, resp.status_code)
        return resp

    async def _release(self, w: Worker, resp: httpx.Response) -> None:
        if getattr(resp, "_router_released", False):
            return
        resp._router_released = True
        await resp.aclose()
        w.in_flight -= 1
        self.metrics.observe(w, resp.elapsed.total_seconds())

    # ---- bookkeeping ------------------------------------------------------------

    def _judge(self, w: Worker, status: int) -> None:
        if status >= 500:
            self.metrics.error(w, f"http_{status}")
            w.breaker.failure()
        else:
            w.breaker.success()

    def _failed(self, w: Worker, kind: str, e: Exception) -> None:
        self.metrics.error(w, kind)
        w.breaker.failure()
        w.last_error = f"{type(e).__name__}: {e}"

    async def _abort(self, targets, sent: dict) -> None:
        """Stop the request on each (worker, task): close our connection, POST abort."""
        rids = pd_body.rids_of(sent)
        calls = []
        for w, task in targets:
            if task is not None and not task.done():
                task.cancel()
            elif task is not None and not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, httpx.Response) and not result.is_closed:
                    await self._release(w, result)
            for rid in rids:
                calls.append(
                    self.client.post(
                        f"{w.url}/abort_request", json={"rid": rid}, timeout=ABORT_TIMEOUT_S
                    )
                )
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*calls, return_exceptions=True)


class _Relay(StreamingResponse):
    """Closes its generator when the client leaves, so its ``finally`` aborts at once.

    (With ASGI spec 2.4 Starlette just stops iterating on a failed send.)
    """

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def _task(worker: Worker, coro) -> asyncio.Task:
    """A task that knows its worker and never warns about an unretrieved exception.

    ``worker.in_flight`` counts the request from now, not from when the task first
    runs: requests that arrive together are all picked before any of their tasks
    starts, and load-based policies (cache_aware, power_of_two) must see the earlier
    picks or they send a whole burst to one worker. ``coro`` releases the count once
    it runs; a task cancelled before it ran releases it here.
    """
    started = False

    async def run():
        nonlocal started
        started = True
        return await coro

    def done(t: asyncio.Task) -> None:
        if not started:
            worker.in_flight -= 1
            coro.close()
        t.cancelled() or t.exception()

    worker.in_flight += 1
    task = asyncio.create_task(run())
    task.worker = worker
    task.add_done_callback(done)
    return task


def _failure(w: Worker, task: asyncio.Task) -> Response | Retry | None:
    """None if the task's answer is a success; else a retry or the client's final answer."""
    e = task.exception()
    if e is not None:
        if isinstance(e, httpx.HTTPError):
            return Retry(w, f"{w.role} {w.url}: {type(e).__name__}: {e or 'connection lost'}")
        raise e
    resp: httpx.Response = task.result()
    if resp.status_code < 400:
        return None
    text = resp.content.decode("utf-8", "replace")
    if resp.status_code >= 500:
        return Retry(w, f"{w.role} {w.url} answered {resp.status_code}: {text[:500]}")
    return Response(resp.content, resp.status_code, media_type=resp.headers.get("content-type"))


def _is_stream(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").startswith("text/event-stream")


async def _with_prefill_logprobs(content: bytes, p_task) -> bytes:
    try:
        p_resp = await asyncio.wait_for(asyncio.shield(p_task), 30)
        merged = pd_body.merge_input_logprobs(p_resp.json(), json.loads(content))
    except Exception:  # the decode answer stands on its own
        return content
    return json.dumps(merged).encode()


async def _disconnected(request: Request) -> None:
    """Returns once the client went away (uvicorn does not cancel the handler)."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
