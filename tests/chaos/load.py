"""The chaos client: mixed requests through the router, a bounded wait, a verdict each.

A request ends as one of:

* ``ok``: 200 with every expected token (``/generate``: greedy-equal to the
  reference, a divergence allowed only at a near-tie of its top two logprobs);
* ``error``: a 4xx/5xx with a JSON body naming the error (``error.message``);
* ``stream_error``: a 200 stream that ends with an SSE error event and ``[DONE]``;
* ``aborted``: the client left on purpose (an injected client abort);
* ``router_gone``: the connection to the router broke while the router was killed;
* ``violation``: anything else: no answer within ``ATTEMPT_TIMEOUT_S`` (a hang), a
  malformed body, a stream cut without an error event, missing or wrong tokens, an
  error without a message, a broken connection with the router alive.

While no worker of a role is healthy (503) or the router is down (connection
refused), the client retries after a back-off, as a real client of a restarting
service would, for up to ``RETRY_WINDOW_S``; those attempts are counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

MAX_NEW_CHOICES = (8, 32, 64)
REF_MAX_NEW = max(MAX_NEW_CHOICES)
ATTEMPT_TIMEOUT_S = 60.0
RETRY_WINDOW_S = 45.0
NEAR_TIE = 1e-4
APIS = (
    ("generate", 0.45),
    ("generate_stream", 0.3),
    ("completions", 0.1),
    ("completions_stream", 0.15),
)


@dataclass
class Plan:
    """One request: what to send and which fault (if any) goes with it."""

    i: int
    prompt: int  # index into the prompt pool
    max_new: int
    api: str
    fault: tuple[str, str] | None = None  # (proxy name | "client", kind)
    abort_at: float = 0.0  # client abort: after this many SSE events, or seconds


@dataclass
class Outcome:
    kind: str
    category: str = ""
    status: int | None = None
    message: str = ""
    attempts: int = 1
    elapsed: float = 0.0
    near_tie: bool = False
    began: float = 0.0  # monotonic time the request was first sent


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def kinds(self) -> Counter:
        return Counter(o.kind for o in self.outcomes)

    def categories(self, kind: str) -> Counter:
        return Counter(o.category for o in self.outcomes if o.kind == kind)

    def samples(self, kind: str, n: int = 3) -> list[str]:
        seen: dict[str, str] = {}
        for o in self.outcomes:
            if o.kind == kind and o.category not in seen:
                seen[o.category] = f"[{o.status}] {o.message[:400]}"
        return list(seen.values())[: n * 4]


def plans(n: int, pool_size: int, fault_rate: float, menu, rng: random.Random) -> list[Plan]:
    """``n`` request plans; ``round(fault_rate * n)`` of them, picked at random, get a
    fault of ``menu`` (``(weight, (target, kind))`` pairs): each entry once (while
    there are enough), the rest drawn by weight."""
    out = []
    weights = [w for _, w in APIS]
    for i in range(n):
        api = rng.choices([a for a, _ in APIS], weights)[0]
        out.append(Plan(i, rng.randrange(pool_size), rng.choice(MAX_NEW_CHOICES), api))
    k = round(fault_rate * n)
    if not k:
        return out
    entries = [f for _, f in menu]
    rng.shuffle(entries)
    extra = rng.choices([f for _, f in menu], [w for w, _ in menu], k=max(0, k - len(entries)))
    for plan, fault in zip(rng.sample(out, k), [*entries[:k], *extra], strict=True):
        plan.fault = fault
        streaming = plan.api.endswith("_stream")
        plan.abort_at = rng.randrange(0, plan.max_new) if streaming else rng.uniform(0, 1.5)
    return out


def body_of(plan: Plan, prompt: list[int], model: str) -> tuple[str, dict]:
    greedy = {"temperature": 0, "ignore_eos": True}
    if plan.api.startswith("generate"):
        body = {
            "input_ids": prompt,
            "sampling_params": {"max_new_tokens": plan.max_new, **greedy},
            "stream": plan.api == "generate_stream",
        }
        return "/generate", body
    body = {"model": model, "prompt": prompt, "max_tokens": plan.max_new, **greedy}
    body["stream"] = plan.api == "completions_stream"
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}  # to count the tokens
    return "/v1/completions", body


# An error message's category: the first of these it contains, else its start
# with numbers and addresses blanked.
KEYWORDS = (
    "no healthy prefill",
    "no healthy decode",
    "lost mid-stream",
    "WAITING_TIMEOUT",
    "BOOTSTRAP_TIMEOUT",
    "offline",
    "restarted",
    "handshake",
    "unknown_peer",
    "aborted",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "ClientConnectorError",
    "ClientResponseError",
    "TimeoutError",
    "transfer failed",
    "KV transfer",
)


def categorize(status: int | None, message: str) -> str:
    for word in KEYWORDS:
        if word in message:
            return f"{status}: {word}"
    short = re.sub(r"https?://\S+|\d+", "#", message)[:60]
    return f"{status}: {short}"


def error_message(text: str) -> str | None:
    """``error.message`` of an error body, or None if it is not one."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) and message.strip() else None


def greedy_verdict(got: list[int], ref: dict, n: int) -> tuple[bool, bool, str]:
    """(ok, near_tie, why) of ``got`` against the reference's first ``n`` tokens."""
    want = ref["output_ids"][:n]
    if got == want:
        return True, False, ""
    if len(got) != n:
        return False, False, f"{len(got)} tokens, expected {n}"
    step = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    top2 = ref["meta_info"]["output_top_logprobs"][step]
    gap = abs(top2[0][0] - top2[1][0])
    if gap < NEAR_TIE:
        return True, True, ""
    return False, False, f"diverges at step {step} (top-2 gap {gap:.2e}): {got} != {want}"


def near_tie_within(ref: dict, n: int) -> bool:
    tops = ref["meta_info"]["output_top_logprobs"][:n]
    return any(abs(t[0][0] - t[1][0]) < NEAR_TIE for t in tops)


class Client:
    """Sends plans to the router at ``url``.

    ``router_kills``: ``(start, end)`` monotonic times of the router kills so far (end
    None while it restarts). A broken connection is the router's death if an attempt
    overlaps a kill, or started within ``STALE_S`` of a restart (a keep-alive
    connection to the dead router).
    """

    STALE_S = 1.0

    def __init__(self, url: str, prompts, refs, model: str, router_kills, arm):
        self.url, self.prompts, self.refs, self.model = url, prompts, refs, model
        self.router_kills, self.arm = router_kills, arm
        self.retries: Counter = Counter()
        self.client_aborts = 0

    async def run(self, client: httpx.AsyncClient, plan: Plan) -> Outcome:
        start = time.monotonic()
        attempts = 0
        backoff = 0.25
        if plan.fault is not None and plan.fault[0] != "client":
            self.arm(plan)
        while True:
            attempts += 1
            began = time.monotonic()
            try:
                outcome = await asyncio.wait_for(self._attempt(client, plan), ATTEMPT_TIMEOUT_S)
            except asyncio.TimeoutError:
                outcome = Outcome("violation", "hang", None, f"no answer in {ATTEMPT_TIMEOUT_S}s")
            except httpx.ConnectError as e:
                outcome = Outcome("retry", "router down", None, repr(e))
            except httpx.TransportError as e:
                gone = self._router_killed(began, time.monotonic())
                kind, category = ("router_gone", "router killed") if gone else ("violation", "")
                outcome = Outcome(kind, category or f"transport: {type(e).__name__}", None, repr(e))
            unavailable = outcome.kind == "error" and outcome.status == 503
            if outcome.kind == "retry" or unavailable:
                self.retries[outcome.category] += 1
                if time.monotonic() - start < RETRY_WINDOW_S:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if outcome.kind == "retry":
                    outcome = Outcome("error", "router down", None, outcome.message)
            outcome.attempts, outcome.began = attempts, start
            outcome.elapsed = time.monotonic() - start
            return outcome

    def _router_killed(self, began: float, ended: float) -> bool:
        for start, end in self.router_kills:
            if start <= ended and (end is None or began <= end + self.STALE_S):
                return True
        return False

    async def _attempt(self, client: httpx.AsyncClient, plan: Plan) -> Outcome:
        path, body = body_of(plan, self.prompts[plan.prompt], self.model)
        aborting = plan.fault == ("client", "abort")
        if not body["stream"]:
            request = client.post(self.url + path, json=body)
            if aborting:
                try:
                    r = await asyncio.wait_for(request, plan.abort_at)
                except asyncio.TimeoutError:
                    self.client_aborts += 1
                    return Outcome("aborted", "client abort")
            else:
                r = await request
            return self._judge_json(plan, r.status_code, r.text)
        async with client.stream("POST", self.url + path, json=body) as r:
            if r.status_code != 200:
                return self._judge_json(plan, r.status_code, (await r.aread()).decode())
            events, done = [], False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                try:
                    events.append(json.loads(line[6:]))
                except ValueError:
                    return Outcome("violation", "malformed SSE event", 200, line[:500])
                if aborting and len(events) > plan.abort_at:
                    self.client_aborts += 1
                    return Outcome("aborted", "client abort")
        return self._judge_stream(plan, events, done)

    def _judge_json(self, plan: Plan, status: int, text: str) -> Outcome:
        if status != 200:
            message = error_message(text)
            if message is None:
                return Outcome("violation", "error without a message", status, text[:500])
            return Outcome("error", categorize(status, message), status, message)
        try:
            body = json.loads(text)
        except ValueError:
            return Outcome("violation", "200 not JSON", status, text[:500])
        return self._judge_output(plan, body, status)

    def _judge_output(self, plan: Plan, body: dict, status: int) -> Outcome:
        ref = self.refs[plan.prompt]
        if plan.api.startswith("generate"):
            ok, tie, why = greedy_verdict(body.get("output_ids", []), ref, plan.max_new)
            if not ok:
                meta = body.get("meta_info", {})
                why += f"; finish_reason {meta.get('finish_reason')}, plan {plan}"
                return Outcome("violation", "wrong output", status, why)
            return Outcome("ok", "ok", status, near_tie=tie)
        choice = (body.get("choices") or [{}])[0]
        used = (body.get("usage") or {}).get("completion_tokens")
        if choice.get("finish_reason") != "length" or used != plan.max_new:
            return Outcome("violation", "wrong completion", status, json.dumps(body)[:500])
        return self._judge_text(plan, choice.get("text", ""), status)

    def _judge_text(self, plan: Plan, text: str, status: int) -> Outcome:
        """OpenAI text against the reference's, for a completion of REF_MAX_NEW tokens
        (shorter ones may cut a multi-byte character differently)."""
        ref = self.refs[plan.prompt]
        if plan.max_new == REF_MAX_NEW and text != ref["text"]:
            if not near_tie_within(ref, plan.max_new):
                same = next(
                    (i for i, (a, b) in enumerate(zip(text, ref["text"], strict=False)) if a != b),
                    min(len(text), len(ref["text"])),
                )
                why = (
                    f"text differs from the reference at character {same} of {len(text)} "
                    f"(reference {len(ref['text'])}): {text[same : same + 40]!r} != "
                    f"{ref['text'][same : same + 40]!r}; plan {plan}"
                )
                return Outcome("violation", "wrong output", status, why)
            return Outcome("ok", "ok", status, near_tie=True)
        return Outcome("ok", "ok", status)

    def _judge_stream(self, plan: Plan, events: list[dict], done: bool) -> Outcome:
        errors = [e for e in events if "error" in e]
        if errors:
            message = (errors[0].get("error") or {}).get("message")
            if not done or not isinstance(message, str) or not message:
                return Outcome("violation", "bad error event", 200, json.dumps(errors[0])[:500])
            return Outcome("stream_error", categorize(200, message), 200, message)
        if not done:
            return Outcome("violation", "stream cut without an error", 200, f"{len(events)} events")
        if not events:
            return Outcome("violation", "empty stream", 200, "")
        if plan.api == "generate_stream":
            return self._judge_output(plan, events[-1], 200)
        chunks = [e["choices"][0] for e in events if e.get("choices")]
        text = "".join(c.get("text", "") for c in chunks)
        used = (events[-1].get("usage") or {}).get("completion_tokens")
        if not chunks or chunks[-1].get("finish_reason") != "length" or used != plan.max_new:
            return Outcome("violation", "wrong completion", 200, json.dumps(events[-2:])[:500])
        return self._judge_text(plan, text, 200)
