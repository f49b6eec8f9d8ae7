"""Continuous batching over the paged KV pool (SGLang-like policy).

Each step is either one prefill batch or one decode batch:

* prefill: running requests with more than one token left to feed continue
  their chunk first, then waiting requests are admitted in arrival order while
  ``max_running_requests``, the batch's ``max_prefill_tokens`` budget and the
  KV budget allow; each request feeds at most ``chunked_prefill_size`` tokens
  per step. Admission reuses the longest cached prefix (whole pages) and
  allocates the rest of the sequence's pages at once, so prefill never waits
  for memory half way.
* decode: every running request feeds its last token; a request whose next
  token starts a page gets one. When pages run out, the most recently admitted
  request is retracted: its pages go back (full ones into the prefix cache) and
  it is requeued at the head to recompute prompt + generated tokens later.

A request that could never fit (prompt at least the pool size or the context
length) is refused up front; a lone running request always fits, so
retraction cannot deadlock.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pdcore.kvcache.allocator import PageAllocator
from pdcore.kvcache.radix_cache import RadixCache
from pdcore.scheduler.request import Req, ReqStatus, finish_reason

logger = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    page_size: int
    max_running_requests: int
    chunked_prefill_size: int  # -1: no per-request chunk limit
    max_prefill_tokens: int
    context_length: int
    eos_token_ids: list[int] = field(default_factory=list)
    decode_reserve_pages: int = 1  # kept free per running request at admission


@dataclass
class ScheduledBatch:
    """One forward pass: per request the tokens ``[prefix_len, prefix_len + extend_len)``."""

    is_decode: bool
    reqs: list[Req]
    prefix_lens: list[int]
    extend_lens: list[int]
    sample: list[bool]  # the row's last token completes the sequence: sample after it

    @property
    def num_tokens(self) -> int:
        return sum(self.extend_lens)


@dataclass
class Sampled:
    """What the sampler produced for one row."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[list[float]] | None = None


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: PageAllocator, cache: RadixCache):
        self.config = config
        self.allocator = allocator
        self.cache = cache
        self.page_size = config.page_size
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.reqs: dict[str, Req] = {}  # live (waiting or running) requests by rid
        self.num_retractions = 0
        # Requests finished while scheduling (not by a sample); the engine reports them.
        self.finished_unreported: list[Req] = []
        # PD prefill: takes a leaving request whose pages a transfer may still read,
        # returning True; that queue calls ``release`` once the transfer is over.
        self.defer_release: Callable[[Req], bool] | None = None

    # ---- limits --------------------------------------------------------------

    @property
    def pool_tokens(self) -> int:
        return self.allocator.capacity * self.page_size

    @property
    def max_seq_len(self) -> int:
        """Longest sequence (prompt + output) a request may reach."""
        return min(self.config.context_length, self.pool_tokens)

    def admission_error(self, num_prompt_tokens: int) -> str | None:
        """Why a prompt can never run here, or None."""
        if num_prompt_tokens >= self.config.context_length:
            return (
                f"the prompt has {num_prompt_tokens} tokens, which does not leave room for "
                f"any output within the context length of {self.config.context_length} tokens"
            )
        if num_prompt_tokens >= self.pool_tokens:
            return (
                f"the prompt has {num_prompt_tokens} tokens, more than the whole KV cache "
                f"holds ({self.pool_tokens} tokens); raise --max-total-tokens or "
                "--mem-fraction-static"
            )
        return None

    def pages_for(self, num_tokens: int) -> int:
        """Pages that hold ``num_tokens`` tokens (PD decode sizes a prompt's transfer)."""
        return -(-num_tokens // self.page_size)

    # ---- requests ------------------------------------------------------------

    def add(self, req: Req) -> None:
        if req.rid in self.reqs:
            raise ValueError(f"request id {req.rid!r} is already in flight")
        self.reqs[req.rid] = req
        self.waiting.append(req)

    def start_running(self, req: Req) -> None:
        """Put a request whose prompt KV is already in its pages (PD decode: prefill
        sent it) straight into the running batch; the PD queue checked its rid is new."""
        self.running.append(req)
        self.reqs[req.rid] = req

    def abort(self, rid: str) -> Req | None:
        """Stop a waiting or running request and release its pages now.

        Returns the request (finished with reason abort), or None for an unknown
        or already finished rid, so repeated aborts are harmless.
        """
        req = self.reqs.get(rid)
        if req is None:
            return None
        was_running = req.status is not ReqStatus.WAITING
        (self.running if was_running else self.waiting).remove(req)
        del self.reqs[rid]
        req.finish(finish_reason("abort", message="aborted by the client"))
        if was_running:
            self._drop(req)
        return req

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- scheduling ----------------------------------------------------------

    def schedule(self) -> ScheduledBatch | None:
        """The next batch to run, or None when there is nothing to do."""
        if self.waiting or any(r.in_prefill for r in self.running):
            batch = self._schedule_prefill()
            if batch is not None:
                return batch
        if self.running:
            return self._schedule_decode()
        return None

    def _schedule_prefill(self) -> ScheduledBatch | None:
        cfg = self.config
        chunk_cap = cfg.chunked_prefill_size if cfg.chunked_prefill_size > 0 else None
        budget = cfg.max_prefill_tokens
        reqs, prefix, extend = [], [], []

        def take(req: Req) -> None:
            nonlocal budget
            n = min(req.remaining, budget, chunk_cap or req.remaining)
            reqs.append(req)
            prefix.append(req.computed_len)
            extend.append(n)
            budget -= n

        for req in self.running:
            if req.in_prefill and budget > 0:
                take(req)
        while self.waiting and budget > 0 and len(self.running) < cfg.max_running_requests:
            req = self.waiting[0]
            if not self._admit(req):
                break
            self.waiting.popleft()
            self.running.append(req)
            take(req)
        if not reqs and not self.running and self.waiting and self._all_pages_reclaimable():
            # Nothing holds pages, yet the head does not fit: it never will.
            req = self.waiting.popleft()
            del self.reqs[req.rid]
            req.finish(finish_reason("abort", message="the request does not fit the KV cache"))
            self.finished_unreported.append(req)
        if not reqs:
            return None
        sample = [p + e == r.seq_len for r, p, e in zip(reqs, prefix, extend, strict=True)]
        return ScheduledBatch(False, reqs, prefix, extend, sample)

    def _all_pages_reclaimable(self) -> bool:
        """Every page is free or only in the prefix cache: no request holds one, here
        or in a PD queue (decode's requests waiting for their KV, prefill's finished
        requests whose KV is still being sent), which will give theirs back."""
        return self.allocator.num_free + self.cache.evictable_pages == self.allocator.capacity

    def _pages_held_elsewhere(self) -> int:
        """Pages neither free, nor in the prefix cache, nor a running request's own:
        a PD queue holds them until its transfers end."""
        own = sum(len(r.pages) - r.num_cached_pages for r in self.running)
        return self.allocator.num_used - self.cache.cached_pages - own

    def _admit(self, req: Req) -> bool:
        """Give ``req`` its cached prefix and pages for its whole sequence, if they fit."""
        fill = req.fill_ids
        # At least one token must be fed to get logits, so never match all of it; and
        # prompt logprobs need the logits of every position from logprob_start_len on,
        # so those positions are recomputed rather than taken from the cache.
        usable = len(fill) - 1
        if req.wants_input_logprobs:
            usable = min(usable, req.logprob_start_len)
            req.input_logprobs, req.input_top_logprobs, req.input_ranks = [], [], []  # partial
        cached, num_cached = self.cache.match_prefix(fill[:usable])
        handle = self.cache.lock(fill[:num_cached])
        need = self.pages_for(len(fill)) - len(cached)
        reserve = self.config.decode_reserve_pages * (len(self.running) + 1)
        required = need + reserve if self.running else need
        if required > self.allocator.num_free + self.cache.evictable_pages:
            self.cache.unlock(handle)
            return False
        new = self.alloc_pages(need)
        req.pages = cached + new
        req.num_cached_pages = len(cached)
        req.prefix_handle = handle
        req.computed_len = num_cached
        if req.admissions == 0:
            req.cached_tokens = min(num_cached, len(req.input_ids))
        req.mark_admitted()
        return True

    def alloc_pages(self, n: int) -> list[int]:
        """``n`` pages, evicting cached prefixes if needed; the caller checked they fit
        (free plus evictable), so a shortfall is an accounting error. PD decode holds
        the pages it takes here outside the running batch until its KV arrives."""
        short = n - self.allocator.num_free
        if short > 0:
            self.cache.evict(short)
        pages = self.allocator.alloc(n)
        if pages is None:
            raise RuntimeError(f"KV accounting error: {n} pages promised but not available")
        return pages

    def _schedule_decode(self) -> ScheduledBatch | None:
        ps = self.page_size
        while True:
            needy = [r for r in self.running if r.computed_len // ps >= len(r.pages)]
            if len(needy) <= self.allocator.num_free + self.cache.evictable_pages:
                break
            victim = max(self.running, key=lambda r: r.admit_order)
            if len(self.running) == 1:
                if self._pages_held_elsewhere():
                    return None  # a PD queue's pages come back when its transfers end
                # cannot happen by the size checks; never spin
                self.finish(victim, finish_reason("length", message="KV cache is full"))
                self.finished_unreported.append(victim)
                return None
            self._retract(victim)
        new = iter(self.alloc_pages(len(needy)))
        for req in needy:
            req.pages.append(next(new))
        reqs = list(self.running)
        n = len(reqs)
        return ScheduledBatch(True, reqs, [r.computed_len for r in reqs], [1] * n, [True] * n)

    def schedule_after(self, batch: ScheduledBatch) -> ScheduledBatch | None:
        """The decode step after ``batch`` while ``batch``'s tokens are still being
        computed (overlap scheduling): the same requests in the same order, each one
        position further, with a page for it. None when that is not the next step:
        requests are waiting, joined or left, or a new page would need a retraction.
        The caller feeds each row the token ``batch`` produces for it."""
        reqs = batch.reqs
        if (
            not batch.is_decode
            or self.waiting
            or len(self.running) != len(reqs)
            or any(a is not b for a, b in zip(self.running, reqs, strict=True))
            or any(r.computed_len != p for r, p in zip(reqs, batch.prefix_lens, strict=True))
        ):
            return None
        ps = self.page_size
        nxt = [p + 1 for p in batch.prefix_lens]
        needy = [r for r, p in zip(reqs, nxt, strict=True) if p // ps >= len(r.pages)]
        if len(needy) > self.allocator.num_free + self.cache.evictable_pages:
            return None
        new = iter(self.alloc_pages(len(needy)))
        for req in needy:
            req.pages.append(next(new))
        n = len(reqs)
        return ScheduledBatch(True, list(reqs), nxt, [1] * n, [True] * n)

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self.release(req)
        req.status = ReqStatus.WAITING
        self.waiting.appendleft(req)
        self.num_retractions += 1
        logger.debug("retracted %s at %d tokens", req.rid, req.seq_len)

    def _drop(self, req: Req) -> None:
        """Release a leaving request's pages unless ``defer_release`` takes them."""
        if self.defer_release is None or not self.defer_release(req):
            self.release(req)

    def release(self, req: Req) -> None:
        """Hand the request's full computed pages to the cache, free the rest, unlock.

        A request that is not ``cacheable`` frees all its own pages instead. PD
        prefill calls this for a request ``defer_release`` took, once its transfer ended."""
        if req.cacheable:
            n_full = req.computed_len // self.page_size
            dups = self.cache.insert(req.tokens(0, n_full * self.page_size), req.pages[:n_full])
            self.allocator.free(dups + req.pages[n_full:])
        else:  # its first num_cached_pages came from the cache at admission: not its own
            self.allocator.free(req.pages[req.num_cached_pages :])
        if req.prefix_handle is not None:
            self.cache.unlock(req.prefix_handle)
        req.pages, req.num_cached_pages, req.prefix_handle = [], 0, None
        req.computed_len = 0

    def _cache_prefix(self, req: Req) -> None:
        """Share a running request's newly full pages through the cache (after prefill)."""
        n_full = req.computed_len // self.page_size
        if n_full <= req.num_cached_pages or not req.cacheable:
            return
        tokens = req.tokens(0, n_full * self.page_size)
        self.allocator.free(self.cache.insert(tokens, req.pages[:n_full]))
        pages, _ = self.cache.match_prefix(tokens)
        handle = self.cache.lock(tokens)
        self.cache.unlock(req.prefix_handle)
        req.pages[:n_full] = pages
        req.num_cached_pages, req.prefix_handle = n_full, handle

    # ---- results -------------------------------------------------------------

    def commit(self, batch: ScheduledBatch, sampled: Sequence[Sampled]) -> list[Req]:
        """Apply a forward pass: advance lengths, append samples, finish requests.

        ``sampled`` has one entry per row with ``batch.sample`` set, in order.
        Returns the requests with a new token (finished ones included).
        """
        produced = []
        it = iter(sampled)
        for req, ext, do_sample in zip(batch.reqs, batch.extend_lens, batch.sample, strict=True):
            req.computed_len += ext
            if not batch.is_decode and req.computed_len >= len(req.input_ids):
                req.input_logprobs_done = True  # its prompt logprobs are all computed
            if not do_sample:
                self._cache_prefix(req)
                continue
            out = next(it)
            if req.params.max_new_tokens == 0:  # prompt scoring only: no output token
                self.finish(req, finish_reason("length"))
                produced.append(req)
                continue
            req.output_ids.append(out.token_id)
            if req.return_logprob:
                req.logprobs.append(out.logprob)
            if req.top_logprobs_num:
                req.top_logprobs.append(out.top_logprobs)
            produced.append(req)
            reason = self.stop_reason(req, out.token_id)
            if reason is not None:
                self.finish(req, reason)
            elif not batch.is_decode:
                self._cache_prefix(req)
        if next(it, None) is not None:
            raise ValueError("more samples than rows to sample")
        return produced

    def stop_reason(self, req: Req, token: int) -> dict | None:
        """Why ``req`` stops after its newest output ``token``, or None; PD decode asks
        this for the first token, which prefill sampled."""
        p = req.params
        if len(req.output_ids) > p.min_new_tokens:
            if token in p.stop_token_ids:
                return finish_reason("stop", token)
            if not p.ignore_eos and token in self.config.eos_token_ids:
                return finish_reason("stop", token)
        if len(req.output_ids) >= p.max_new_tokens:
            return finish_reason("length")
        if req.seq_len >= self.max_seq_len:
            return finish_reason("length", message="reached the maximum sequence length")
        return None

    def finish(self, req: Req, reason: dict) -> None:
        """End a running request with ``reason`` and release (or defer) its pages."""
        self.running.remove(req)
        del self.reqs[req.rid]
        req.finish(reason)
        self._drop(req)

    def fail_all(self) -> list[Req]:
        """Drop every live request (after an unrecoverable step error), releasing pages."""
        failed = list(self.waiting) + list(self.running)
        for req in list(self.running):
            self.running.remove(req)
            self._drop(req)
        self.waiting.clear()
        self.reqs.clear()
        return failed
