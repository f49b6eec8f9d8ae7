"""The request path: pick workers, send, pass the answer through, fail over.

PD mode sends the body to a prefill P and a decode D at once (P gets a
non-streaming copy: the router only needs its status) and returns D's answer.
Whichever side fails first gets the other aborted (its connection closed and
``/abort_request`` by rid), so neither server holds KV pages for a request that
can no longer finish. Connection errors and 5xx before the client saw a byte
are retried on a new pair with a new room.

Upstream HTTP is ``aiohttp`` (one keep-alive ``ClientSession`` per router): a
request costs about a third of the CPU of ``httpx.AsyncClient``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse

from pdcore.router import pd_body, pd_logprobs
from pdcore.router.health import HealthChecker
from pdcore.router.metrics import RouterMetrics
from pdcore.router.policies import Policy, request_key
from pdcore.router.workers import Worker, WorkerPool

log = logging.getLogger("pdcore.router")
# Connect within 5 s; no read limit (a stream may be silent for long), but a reset
# connection surfaces as ``aiohttp.ClientPayloadError``/``ServerDisconnectedError``.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=5.0, sock_read=None)
ABORT_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
# Idle keep-alive connections are dropped before the workers' uvicorn (5 s) drops them.
KEEPALIVE_S = 4.0
# What a failed upstream request raises (a connect timeout is both).
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
FORWARDED_HEADERS = (b"authorization",)
JSON_HEADERS = {"Content-Type": "application/json"}


def make_session() -> aiohttp.ClientSession:
    """The router's upstream client: keep-alive pool, no connection limit, no proxies.

    No ``Accept-Encoding`` is sent, so workers answer uncompressed and bytes pass
    through as they are.
    """
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=TIMEOUT,
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


def error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def dumps(body) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class NoWorker(Exception):
    def __init__(self, role: str):
        super().__init__(role)
        self.role = role


class Retry:
    """An attempt failed in a way a new pair may not: which worker, and why."""

    __slots__ = ("message", "worker")

    def __init__(self, worker: Worker, message: str):
        self.worker, self.message = worker, message


class Upstream:
    """A worker's answer: status, content type, and its body (read) or ``resp`` (open)."""

    __slots__ = ("body", "content_type", "released", "resp", "start", "status")

    def __init__(self, resp, status: int, content_type: str | None, start: float, body=b""):
        self.resp, self.status, self.content_type = resp, status, content_type
        self.start, self.body, self.released = start, body, resp is None


class Proxy:
    def __init__(
        self,
        pool: WorkerPool,
        policies: dict[str, Policy],
        session: aiohttp.ClientSession,
        metrics: RouterMetrics,
        checker: HealthChecker,
        pd_mode: bool,
        max_retries: int = 2,
        rng: random.Random | None = None,
    ):
        self.pool, self.policies, self.session = pool, policies, session
        self.metrics, self.checker = metrics, checker
        self.pd_mode, self.max_retries = pd_mode, max_retries
        self.rng = rng or random.Random()

    def pick(self, role: str, body: dict, exclude: set[str]) -> Worker:
        workers = self.pool.available(role, exclude)
        if not workers:
            raise NoWorker(role)
        policy = self.policies[role]
        return policy.pick(workers, request_key(body) if policy.name == "cache_aware" else None)

    async def route(
        self,
        path: str,
        body: dict,
        raw: bytes,
        raw_headers,
        disconnected: Callable[[], Awaitable[None]],
    ) -> Response:
        """Answer one generation request.

        ``body`` is the parsed JSON object, ``raw`` its bytes (sent as they are to a
        regular worker), ``raw_headers`` the client's ASGI headers, and
        ``disconnected()`` returns once the client went away.
        """
        if self.pd_mode:
            try:
                pd_body.check_pd_body(path, body)
            except pd_body.BadRequest as e:
                return error(400, str(e))
        headers = dict(JSON_HEADERS)
        for k, v in raw_headers:
            if k.lower() in FORWARDED_HEADERS:  # a worker's own key replaces it (Worker.auth)
                headers[k.decode("latin-1").title()] = v.decode("latin-1")
        exclude: set[str] = set()
        last: Retry | None = None
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self.metrics.retries.inc()
            try:
                if self.pd_mode:
                    outcome = await self._pd_attempt(disconnected, path, body, headers, exclude)
                else:
                    outcome = await self._single_attempt(
                        disconnected, path, body, raw, headers, exclude
                    )
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

    async def _pd_attempt(self, disconnected, path, body, headers, exclude) -> Response | Retry:
        p = self.pick("prefill", body, exclude)
        d = self.pick("decode", body, exclude)
        if p.bootstrap_port is None:
            await self.checker.refresh_info(p)
            if p.bootstrap_port is None:
                p.breaker.failure()
                return Retry(p, f"prefill {p.url}: no disaggregation_bootstrap_port known")
        sent = pd_body.inject(path, body, p.host, p.bootstrap_port, self.rng)
        p_task = _task(p, self._prefill(p, path, dumps({**sent, "stream": False}), headers))
        d_task = _task(d, self._open(d, path, dumps(sent), headers))
        gone = asyncio.create_task(disconnected())
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
                    answer = await self._answer(d, d_task.result(), p_task, sent, path)
                    if isinstance(answer, Retry):
                        await self._abort([(p, p_task)], sent)
                    return answer
        finally:
            gone.cancel()

    async def _answer(self, w: Worker, up: Upstream, p_task, sent, path: str) -> Response | Retry:
        """A 2xx answer: streamed through as it comes, or whole (+ prefill's prompt
        logprobs, see ``pd_logprobs``); a retry if the connection broke before the
        whole body came (the client saw nothing)."""
        merge = p_task is not None and pd_logprobs.wanted(path, sent)
        if (up.content_type or "").startswith("text/event-stream"):
            return self._relay(w, up, p_task if merge else None, sent, p_task)
        try:
            content = await up.resp.read()
        except UPSTREAM_ERRORS as e:
            self._failed(w, "connection", e)
            return Retry(w, f"{w.role} {w.url}: answer cut short: {type(e).__name__}: {e}")
        finally:
            self._release(w, up)
        self._judge(w, up.status)
        if merge:
            content = await _with_prefill_logprobs(content, p_task)
        return Response(content, up.status, media_type=up.content_type)

    def _relay(self, d: Worker, up: Upstream, merge_from, sent, p_task) -> StreamingResponse:
        """Pass SSE events through as they arrive; abort both sides if it did not complete.

        Only whole events go out (up to the last blank line), so a connection lost in
        the middle of one ends the stream with the error event, not a half event.
        ``merge_from``: prefill's task whose prompt logprobs go into the events (None:
        pass them as they are).
        """

        async def chunks():
            completed = False
            partial = b""  # the start of an event whose end has not come yet
            merger = None
            try:
                async for chunk in up.resp.content.iter_any():
                    partial += chunk
                    end = _events_end(partial)
                    if end:
                        block = partial[:end]
                        if merge_from is not None:
                            if merger is None:
                                prefill = await _prefill_answer(merge_from)
                                merger = pd_logprobs.EventMerger(prefill or {})
                            block = merger.block(block)
                        yield block
                        partial = partial[end:]
                if partial:
                    yield partial
                completed = True
            except UPSTREAM_ERRORS as e:
                self._failed(d, "stream", e)
                message = f"{d.role} worker {d.url} lost mid-stream: {type(e).__name__}: {e}"
                err = {"error": {"message": message, "type": "service_unavailable", "code": 502}}
                yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
            finally:
                self._release(d, up)
                if not completed:
                    with anyio.CancelScope(shield=True):
                        p = [] if p_task is None else [(p_task.worker, p_task)]
                        await self._abort([(d, None), *p], sent)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return _Relay(chunks(), up.status, headers, media_type=up.content_type)

    async def _prefill(self, p: Worker, path, data: bytes, headers) -> Upstream:
        """POST to prefill and read the whole answer; its bookkeeping.

        ``p.in_flight`` was counted by ``_task`` (at pick time); released here.
        """
        self.metrics.sent(p)
        start = time.monotonic()
        try:
            async with self.session.post(p.url + path, data=data, headers=p.auth(headers)) as r:
                up = Upstream(None, r.status, r.content_type, start, await r.read())
        except UPSTREAM_ERRORS as e:
            self._failed(p, "connection", e)
            raise
        finally:
            p.in_flight -= 1
        self.metrics.observe(p, time.monotonic() - start)
        self._judge(p, up.status)
        return up

    # ---- one worker (non-PD, or decode's side) ----------------------------------

    async def _single_attempt(self, disconnected, path, body, raw, headers, exclude):
        w = self.pick("regular", body, exclude)
        task = _task(w, self._open(w, path, raw, headers))
        gone = asyncio.create_task(disconnected())
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                await self._abort([(w, task)], body)
                return Response(status_code=499)
            failed = _failure(w, task)
            if failed is not None:
                return failed
            return await self._answer(w, task.result(), None, body, path)
        finally:
            gone.cancel()

    async def _open(self, w: Worker, path, data: bytes, headers) -> Upstream:
        """Send and wait for the headers; a 2xx body stays open for the caller to stream.

        ``w.in_flight`` was counted by ``_task`` (at pick time); ``_release`` ends it.
        """
        self.metrics.sent(w)
        start = time.monotonic()
        try:
            resp = await self.session.post(w.url + path, data=data, headers=w.auth(headers))
        except BaseException as e:
            w.in_flight -= 1
            if isinstance(e, UPSTREAM_ERRORS):
                self._failed(w, "connection", e)
            raise
        up = Upstream(resp, resp.status, resp.headers.get("Content-Type"), start)
        if up.status >= 400:  # error bodies are small: read them now
            try:
                up.body = await resp.read()
            finally:
                self._release(w, up)
            self._judge(w, up.status)
        return up

    def _release(self, w: Worker, up: Upstream) -> None:
        """End an open answer: its connection back to the pool if read to the end, else
        closed (which is how the worker learns we left)."""
        if up.released:
            return
        up.released = True
        resp = up.resp
        if resp.content.is_eof():
            resp.release()
        else:
            resp.close()
        w.in_flight -= 1
        self.metrics.observe(w, time.monotonic() - up.start)

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
                if isinstance(result, Upstream) and not result.released:
                    self._release(w, result)
            for rid in rids:
                calls.append(self._post_abort(w, rid))
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*calls, return_exceptions=True)

    async def _post_abort(self, w: Worker, rid: str) -> None:
        url = f"{w.url}/abort_request"
        async with self.session.post(
            url, data=dumps({"rid": rid}), headers=w.auth(JSON_HEADERS), timeout=ABORT_TIMEOUT
        ) as r:
            await r.read()


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


PREFILL_ANSWER_WAIT_S = 30  # prefill's answer for prompt logprobs; decode's stands without


def _events_end(buf: bytes) -> int:
    """Length of the whole SSE events at the start of ``buf`` (0 if none ended yet)."""
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := buf.rfind(sep)) >= 0]
    return max(ends, default=0)


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
        if isinstance(e, UPSTREAM_ERRORS):
            return Retry(w, f"{w.role} {w.url}: {type(e).__name__}: {e or 'connection lost'}")
        raise e
    up: Upstream = task.result()
    if up.status < 400:
        return None
    if up.status >= 500:
        text = up.body.decode("utf-8", "replace")
        return Retry(w, f"{w.role} {w.url} answered {up.status}: {text[:500]}")
    return Response(up.body, up.status, media_type=up.content_type)


async def _prefill_answer(p_task) -> dict | list | None:
    """Prefill's whole answer (parsed), or None if it failed or is not JSON."""
    try:
        p_up = await asyncio.wait_for(asyncio.shield(p_task), PREFILL_ANSWER_WAIT_S)
        return json.loads(p_up.body) if p_up.status < 400 else None
    except Exception:  # the decode answer stands on its own
        return None


async def _with_prefill_logprobs(content: bytes, p_task) -> bytes:
    prefill = await _prefill_answer(p_task)
    if prefill is None:
        return content
    try:
        merged = pd_logprobs.merge(prefill, json.loads(content))
    except ValueError:
        return content
    return json.dumps(merged).encode()
