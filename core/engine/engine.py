"""``Engine``: the synchronous serving loop body (scheduler + model runner + sampler).

The engine process (``engine_process.run_engine``) owns one and calls
``add_request`` / ``abort`` as messages arrive and ``step`` while
``has_work()``. Every call is non-blocking apart from the forward pass.

KV accounting invariant (checked by ``kv_usage().check()`` and the tests)::

    total_pages == free_pages + used_pages + cached_pages
    cached_pages == locked_pages + evictable_pages

``total``: allocatable pages (the padding page excluded). ``free``: on the
allocator's free list. ``used``: owned by live requests and not in the prefix
cache. ``cached``: owned by the radix cache; ``locked`` of them are shared by
running requests, the rest can be evicted. When nothing runs, used == locked
== 0, so free + evictable == total.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pdcore.attention.base import AttentionBackend, AttentionConfig, AttentionImpl
from pdcore.attention.hybrid import HybridAttention
from pdcore.config import ServerArgs, attention_label
from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST, reserved_host_error
from pdcore.distributed.state import kv_head_range, min_over_ranks, shard_range, tp
from pdcore.engine.io_struct import EngineError, EngineStats, GenerateReq, TokenOut
from pdcore.engine.model_runner import ModelRunner
from pdcore.engine.overlap import LaunchedStep, TokenReadback
from pdcore.engine.pd import build_pd_queues
from pdcore.engine.prompt_logprobs import add_prompt_logprobs
from pdcore.engine.sampler import Sampler
from pdcore.engine.step_plan import StepPlan
from pdcore.errors import PdcoreError, PluginError
from pdcore.kvcache.pool import KVPool, KVShape, pages_for_budget
from pdcore.kvcache.radix_cache import RadixCache
from pdcore.model.base import CausalLM
from pdcore.model.config import ModelConfig
from pdcore.model.kernels import TORCH_KERNELS
from pdcore.platform import CpuPlatform, Platform
from pdcore.sampling_params import MAX_TOP_LOGPROBS, SamplingParams
from pdcore.scheduler.request import Req, finish_reason
from pdcore.scheduler.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING_REQUESTS = 256

AttentionSpec = str | AttentionBackend | Callable[[AttentionConfig], AttentionImpl] | None


@dataclass(frozen=True)
class KVUsage:
    """Page counts; see the module docstring for the invariant."""

    total: int
    free: int
    used: int
    cached: int
    locked: int

    @property
    def evictable(self) -> int:
        return self.cached - self.locked

    def check(self) -> None:
        if self.total != self.free + self.used + self.cached:
            raise AssertionError(f"KV pages leaked or double-counted: {self}")
        if not 0 <= self.locked <= self.cached:
            raise AssertionError(f"locked pages out of range: {self}")


def _platform_of(name: str, device: torch.device) -> Platform:
    """The platform of ``device``: the one ``--device`` names where its tensors live
    on that torch device type, else the one named after the device type (an engine
    built on an explicit device, as tests do)."""
    from pdcore.registry import get_registry

    registry = get_registry()
    try:
        selected = registry.select_platform(name)
        if selected.torch_device().type == device.type:
            return selected
    except PdcoreError:
        pass
    try:
        return registry.select_platform(device.type)
    except PdcoreError:
        if device.type == "cpu":
            return CpuPlatform()
        raise


class Engine:
    def __init__(
        self,
        model: CausalLM,
        model_config: ModelConfig,
        server_args: ServerArgs,
        attention: AttentionSpec = None,
        device: torch.device | str | None = None,
    ):
        self.model = model
        self.model_config = model_config
        self.server_args = server_args
        if device is None:
            from pdcore.registry import get_registry

            platform = get_registry().select_platform(server_args.device)
            device = platform.torch_device(server_args.base_gpu_id)
        self.device = torch.device(device)
        self.platform = platform = _platform_of(server_args.device, self.device)
        dtype = next(model.parameters()).dtype
        cfg = model_config
        self.tp = tp()
        # This rank's share of the heads (its KV pool holds only those); they split over
        # the attention group (the TP group, or this rank's DP group's ranks).
        attn = self.tp.attn
        kv = cfg.kv_cache_spec()  # MHA's K/V heads, or MLA's one latent head (on every rank)
        local_kv_heads = kv_head_range(kv.num_kv_heads, attn.rank, attn.size)[1]
        local_heads = shard_range(cfg.num_attention_heads, attn.rank, attn.size)[1]
        shape = KVShape(
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=local_kv_heads,
            head_dim=kv.head_dim,
            page_size=server_args.page_size,
            dtype=dtype,
            latent_rank=kv.latent_rank,
        )
        free_bytes = None
        if server_args.max_total_tokens is None:
            # Weights are loaded by now, so this is what is left for the KV cache.
            free_bytes = platform.memory_info(self.device.index or 0).free_bytes
        num_pages = pages_for_budget(
            shape,
            max_total_tokens=server_args.max_total_tokens,
            mem_fraction_static=server_args.mem_fraction_static,
            free_bytes=free_bytes,
            device_type=self.device.type,
        )
        # Every rank must hand out the same page ids: the smallest pool wins.
        self.pool = KVPool(shape, min_over_ranks(num_pages), self.device)
        self.cache = RadixCache(server_args.page_size, self.pool.allocator)
        context = server_args.context_length or cfg.max_position_embeddings
        self.scheduler = Scheduler(
            SchedulerConfig(
                page_size=server_args.page_size,
                max_running_requests=server_args.max_running_requests
                or min(DEFAULT_MAX_RUNNING_REQUESTS, self.pool.allocator.capacity),
                chunked_prefill_size=server_args.chunked_prefill_size,
                max_prefill_tokens=server_args.max_prefill_tokens,
                context_length=context,
                eos_token_ids=list(cfg.eos_token_ids),
            ),
            self.pool.allocator,
            self.cache,
        )
        attn_config = AttentionConfig(
            local_heads,
            local_kv_heads,
            kv.head_dim,
            server_args.page_size,
            dtype,
            self.device,
            kv.softmax_scale,
        )
        self.attention_phases, prefill_factory, decode_factory = _attention_factories(
            attention, server_args, platform, attn_config, kv.kind
        )
        self.attention_name = attention_label(*self.attention_phases)
        attn = prefill_factory(attn_config)
        if decode_factory is not prefill_factory:
            attn = HybridAttention(attn, decode_factory(attn_config))
        self.runner = ModelRunner(model, self.pool, attn, self.device)
        fused = platform.layer_kernels() if server_args.enable_fused_kernels else None
        self.runner.ctx.kernels = fused or TORCH_KERNELS
        self.cuda_graph_sizes = self._capture_graphs(
            server_args, decode_factory, attn_config, context
        )
        self.sampler = Sampler(self.device, server_args.random_seed, platform)
        self._pending: list[TokenOut | EngineError] = []
        # Overlap scheduling (``overlap``): the decode step launched, its tokens not read.
        self._launched: LaunchedStep | None = None
        self.overlapped_steps = 0  # decode steps launched before the last one's tokens were read
        self.overlap_dropped_rows = 0  # their rows of requests that finished meanwhile
        # Steps overlap only where the runner can launch one from device tokens
        # (``ModelRunner.can_overlap``: CUDA graphs). Benchmarks flip ``overlap`` at run
        # time to compare; off: the step in flight is committed by the next ``step``.
        self._readback = TokenReadback(self.scheduler.config.max_running_requests, platform)
        self.overlap = not server_args.disable_overlap_schedule
        # PD prefill/decode queues around the scheduler (None in null mode).
        self.pd = build_pd_queues(server_args, self.pool, self.scheduler, cfg, platform.memory_kind)
        self.pd_follower = None  # a non-leader rank's PD part (see pdcore.engine.pd)
        if not self.tp.is_leader:
            self.pd_follower, self.pd = self.pd, None
        self.kv_stage = None  # prefill leader: stages chunks for decode ranks (pd_tp)
        self._wire_kv_stage(kv.num_kv_heads)

    def _wire_kv_stage(self, total_kv_heads: int) -> None:
        """Prefill: the leader stages chunks whose decode ranks split heads otherwise;
        under TP every forward is followed by that gather on all ranks."""
        from pdcore.engine.pd_tp import KVStage

        follower_stage = getattr(self.pd_follower, "stage", None)
        manager = getattr(self.pd, "manager", None)
        if self.tp.is_leader and manager is not None and manager.role == "prefill":
            self.kv_stage = KVStage(self.pool, total_kv_heads)
            self.runner.stage_after = self.tp.attn_size > 1
        elif follower_stage is not None:
            self.runner.stage_after = True
            self.runner.after_follow = follower_stage.follow

    def _capture_graphs(self, server_args, factory, attn_config, context) -> list[int]:
        """Decode graphs where they can run: a platform that captures them
        (``Platform.supports_graphs``), a graph-safe attention backend, not
        disabled, not a PD prefill server (it never decodes), and not under DP
        attention (each pass trades token counts between DP groups)."""
        if (
            not self.platform.supports_graphs
            or server_args.disable_cuda_graph
            or server_args.disaggregation_mode == "prefill"
            or not self.runner.attn.cuda_graph_safe
            or self.tp.dp_size > 1
        ):
            return []
        max_bs = server_args.cuda_graph_max_bs or min(
            self.scheduler.config.max_running_requests, 256
        )
        return self.runner.capture_decode_graphs(
            lambda: factory(attn_config), max_bs, context, self.platform
        )

    # ---- requests ------------------------------------------------------------

    def add_request(self, msg: GenerateReq) -> None:
        """Queue a request; a request that cannot run yields an ``EngineError`` output."""
        try:
            req = self._make_req(msg)
        except (ValueError, TypeError) as e:
            self._pending.append(EngineError(msg.rid, str(e), 400))
            return
        if req.params.max_new_tokens == 0:
            if not (req.return_logprob and self.server_args.disaggregation_mode != "decode"):
                req.finish(finish_reason("length"))
                self._pending.append(self._token_out(req))
                return
            # Prompt logprobs only: a prefill here and no output token (in PD mode too:
            # prefill scores the prompt alone, decode answers at once with nothing).
            self.scheduler.add(req)
            return
        if self.pd is None:
            self.scheduler.add(req)
            return
        try:
            self._add_pd(req, msg)
        except ValueError as e:
            self._pending.append(EngineError(msg.rid, str(e), 400))

    def _add_pd(self, req: Req, msg: GenerateReq) -> None:
        for name in ("bootstrap_host", "bootstrap_port", "bootstrap_room"):
            if getattr(msg, name) is None:
                raise ValueError(f"{name!r} is required with PD disaggregation")
        refused = reserved_host_error(
            msg.bootstrap_host, self.server_args.disaggregation_transfer_backend
        )
        if refused and not msg.fake_transfer:
            raise ValueError(refused)
        fake = msg.fake_transfer or msg.bootstrap_host == FAKE_BOOTSTRAP_HOST
        if self.server_args.disaggregation_mode == "prefill":
            self.pd.add(req, msg.bootstrap_room, fake=fake)
        else:
            addr = f"{msg.bootstrap_host}:{msg.bootstrap_port}"
            self.pd.add(req, msg.bootstrap_room, addr, fake=fake)

    def _make_req(self, msg: GenerateReq) -> Req:
        vocab = self.model_config.vocab_size
        params = SamplingParams.from_dict(msg.sampling)
        params.validate(vocab)
        if params.n != 1:
            raise ValueError("n must be 1 here; the front end fans n > 1 out into requests")
        ids = msg.input_ids
        if not ids:
            raise ValueError("input_ids must not be empty")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(f"input_ids must be token ids in [0, {vocab})")
        if not 0 <= msg.top_logprobs_num <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}]")
        if msg.rid in self.scheduler.reqs or (self.pd is not None and self.pd.knows(msg.rid)):
            raise ValueError(f"request id {msg.rid!r} is already in flight")
        error = self.scheduler.admission_error(len(ids))
        if error:
            raise ValueError(error)
        start = msg.logprob_start_len
        if start != -1 and not 0 <= start < len(ids):
            raise ValueError(
                f"logprob_start_len must be -1 or in [0, {len(ids)}) for a prompt of "
                f"{len(ids)} tokens, got {start}"
            )
        return Req(
            msg.rid,
            list(ids),
            params,
            msg.return_logprob,
            msg.top_logprobs_num,
            logprob_start_len=start,
        )

    def abort(self, rid: str) -> None:
        """Stop ``rid`` and free its pages now; unknown or finished rids are ignored.

        An aborted request gets a last ``TokenOut`` with finish_reason abort.
        """
        if self._launched is not None:  # the GPU may still write the pages freed here
            self._launched.wait()
        req = self.scheduler.abort(rid)
        if req is None and self.pd is not None:
            req = self.pd.abort(rid)
        if req is not None:
            self._pending.append(self._token_out(req))

    def set_pd_wakeup(self, callback) -> None:
        """Have ``callback`` called (from any thread) when a PD room may have moved on."""
        manager = getattr(self.pd, "manager", None)
        if manager is not None:
            manager.on_change = callback

    def has_work(self) -> bool:
        return bool(self._pending) or self.has_compute() or self._pd_waiting()

    def has_compute(self) -> bool:
        """Work for the model; False while only PD transfers or handshakes are awaited."""
        return self.scheduler.has_work() or self._launched is not None

    def _pd_waiting(self) -> bool:
        return self.pd is not None and self.pd.has_work()

    # ---- stepping ------------------------------------------------------------

    def step(self) -> list[TokenOut | EngineError]:
        """Run one scheduler step; returns the outputs it produced (maybe none).

        Outputs stay queued until the step succeeds, so ``fail_all`` after an
        exception still delivers them.
        """
        if self._launched is not None:
            self._overlapped_step()
            outs, self._pending = self._pending, []
            return outs
        if self._poll_pd():
            # First tokens from prefill go out now, not after the next decode
            # forward (which would add one step to every PD request's TTFT).
            outs, self._pending = self._pending, []
            return outs
        batch = self._schedule()
        if batch is not None:
            if self._overlappable(batch, [p + 1 for p in batch.prefix_lens]):
                self._launch(batch, self.runner.forward(batch))
            else:
                self._forward(batch)
        outs, self._pending = self._pending, []
        return outs

    # Overlap scheduling (see ``pdcore.engine.overlap``).

    def _overlappable(self, batch, next_positions: list[int]) -> bool:
        """``batch`` may run with its tokens read back later, and a step after it could
        be launched from the device (rows at ``next_positions``)."""
        return (
            self.overlap
            and batch.is_decode
            and self.runner.can_overlap(len(batch.reqs), max(next_positions) + 1)
            and all(self.sampler.overlappable(r) for r in batch.reqs)
        )

    def _launch(self, batch, logits) -> None:
        tokens = self.sampler.tokens(logits, batch.reqs, self.model_config.eos_token_ids)
        self._launched = self._readback.start(batch, tokens)

    def _overlapped_step(self) -> None:
        """Launch the step after the one in flight if nothing else can come next,
        then commit the one in flight."""
        cur, self._launched = self._launched, None
        nxt = None
        if not self._poll_pd() and self._may_follow(cur.batch):
            nxt = self.scheduler.schedule_after(cur.batch)
        if nxt is not None:
            plan = StepPlan(
                is_decode=True,
                tokens=[0] * len(nxt.reqs),  # fed from ``cur.tokens`` on the device
                prefix_lens=nxt.prefix_lens,
                extend_lens=nxt.extend_lens,
                pages=[
                    r.pages[: p // self.pool.page_size + 1]
                    for r, p in zip(nxt.reqs, nxt.prefix_lens, strict=True)
                ],
                sample=nxt.sample,
            )
            self._launch(nxt, self.runner.forward_after(plan, cur.tokens))
            self.overlapped_steps += 1
        cur.wait()
        live, sampled = cur.live()
        self.overlap_dropped_rows += len(cur.batch.reqs) - len(live.reqs)
        self._commit(live, sampled)
        if self._launched is not None and any(r.finished for r in nxt.reqs):
            self._launched.wait()  # its rows of finished requests wrote their freed pages

    def _may_follow(self, batch) -> bool:
        """No request of ``batch`` can finish by length with its token in flight, so a
        step after it is needed, and it may be overlapped too."""
        limit = self.scheduler.max_seq_len
        return all(
            len(r.output_ids) + 2 <= r.params.max_new_tokens and r.seq_len + 2 <= limit
            for r in batch.reqs
        ) and self._overlappable(batch, [p + 1 for p in batch.prefix_lens])

    # DP attention: a DP leader's step, in lockstep with the others (``dp_lockstep``).

    def dp_schedule(self):
        """Advance the PD queues and pick the next batch (None: nothing to run here),
        before the leaders trade their token counts."""
        self._poll_pd()
        return self._schedule()

    def dp_forward(self, batch, counts: list[int]) -> None:
        """Exactly one forward with every DP group's token ``counts``: ``batch``, or an
        idle pass (zero tokens) when it is None."""
        if batch is None:
            self.runner.idle(counts)
            if self.kv_stage is not None and self.runner.stage_after:  # followers gather too
                self.kv_stage.lead(self.pd.manager)
        else:
            self._forward(batch, counts)

    def take_outputs(self) -> list[TokenOut | EngineError]:
        outs, self._pending = self._pending, []
        return outs

    def _poll_pd(self) -> bool:
        """Advance the PD queues; True when requests arrived from prefill."""
        if self.pd is None:
            return False
        arrived = self.pd.poll()
        self._pending.extend(self._pd_out(x) for x in arrived)
        return any(isinstance(x, Req) for x in arrived)

    def _schedule(self):
        batch = self.scheduler.schedule()
        for req in self.scheduler.finished_unreported:
            if self.pd is not None:
                self.pd.dropped(req)
            self._pending.append(self._token_out(req))
        self.scheduler.finished_unreported.clear()
        return batch

    def _forward(self, batch, dp_tokens: list[int] | None = None) -> None:
        staged = False
        try:
            if dp_tokens is None:
                logits = self.runner.forward(batch)
            else:  # DP attention: every DP group's token counts ride in the plan
                logits = self.runner.forward(batch, dp_tokens)
            staged = self.runner.stage_after  # followers now wait for the KV gather
            rows = [r for r, s in zip(batch.reqs, batch.sample, strict=True) if s]
            scores = self.runner.take_prompt_scores()
            if scores is not None:
                add_prompt_logprobs(scores, batch.reqs, batch.prefix_lens, batch.extend_lens)
            sampled = self.sampler(logits, rows, self.model_config.eos_token_ids) if rows else []
            self._commit(batch, sampled)
        finally:
            # Even after an error: TP followers wait for this gather's page list.
            if self.kv_stage is not None and (staged or self.tp.attn_size == 1):
                self.kv_stage.lead(self.pd.manager)

    def _commit(self, batch, sampled) -> None:
        produced = self.scheduler.commit(batch, sampled)
        if self.pd is not None:
            if self.pd.sends_kv:
                # Transfer engines read the chunk's pages from their own streams
                # (UCX, CUDA IPC copies): the KV writes of this forward must have
                # landed first. A batch of non-final chunks samples nothing, so
                # nothing else has synchronized with the device yet.
                self.platform.synchronize(self.device)
            produced = self.pd.after_commit(batch, produced)
        self._pending.extend(self._token_out(r) for r in produced)

    def fail_all(self, message: str) -> list[TokenOut | EngineError]:
        """After an unrecoverable step error: queued outputs, then an error for every
        live request, whose pages are released."""
        if self._launched is not None:
            launched, self._launched = self._launched, None
            try:  # its pages are about to be freed
                launched.wait()
            except Exception as e:  # the device itself failed: nothing more to wait for
                logger.warning("waiting for the launched decode step failed: %s", e)
        errors = [EngineError(r.rid, message, 500) for r in self.scheduler.fail_all()]
        outs, self._pending = [*self._pending, *errors], []
        return outs

    def _pd_out(self, item: Req | tuple[str, str]) -> TokenOut | EngineError:
        """A PD queue's report: a request with new tokens, or ``(rid, failure reason)``."""
        if isinstance(item, Req):
            return self._token_out(item)
        rid, reason = item
        return EngineError(rid, f"PD KV transfer failed: {reason}", 502)

    def _token_out(self, req: Req) -> TokenOut:
        start = req.sent_tokens
        req.sent_tokens = len(req.output_ids)
        inputs: dict = {}
        if req.return_logprob and req.input_logprobs_done and not req.input_logprobs_sent:
            # Once, with the first output; SGLang's None for the token at logprob_start_len.
            req.input_logprobs_sent = True
            dropped = req.pd_local_prefill and self.server_args.disaggregation_mode == "prefill"
            if not dropped:  # a prefill whose room decode served itself reports nothing
                inputs = dict(
                    input_logprobs=[None, *req.input_logprobs],
                    input_top_logprobs=[None, *req.input_top_logprobs]
                    if req.top_logprobs_num
                    else [],
                    input_ranks=[None, *req.input_ranks],
                )
        return TokenOut(
            **inputs,
            rid=req.rid,
            token_ids=req.output_ids[start:],
            logprobs=req.logprobs[start:],
            top_logprobs=req.top_logprobs[start:],
            finish_reason=req.finish_reason,
            prompt_tokens=len(req.input_ids),
            cached_tokens=req.cached_tokens,
            completion_tokens=len(req.output_ids),
            pd_local_prefill=req.pd_local_prefill,
        )

    # ---- cache and accounting ------------------------------------------------

    def flush_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while requests are waiting or running."""
        if self.scheduler.has_work() or self._pd_waiting():
            return False
        self.cache.reset()
        return True

    def kv_usage(self) -> KVUsage:
        used = sum(len(r.pages) - r.num_cached_pages for r in self.scheduler.running)
        if self.pd is not None:
            used += self.pd.held_pages()
        return KVUsage(
            total=self.pool.allocator.capacity,
            free=self.pool.allocator.num_free,
            used=used,
            cached=self.cache.cached_pages,
            locked=self.cache.locked_pages,
        )

    def stats(self, token: int = 0, flushed: bool = False) -> EngineStats:
        usage = self.kv_usage()
        return EngineStats(
            token=token,
            num_running=len(self.scheduler.running),
            # PD requests waiting for their peer are load too (the router reads this).
            num_waiting=len(self.scheduler.waiting) + (self.pd.num_waiting() if self.pd else 0),
            total_pages=usage.total,
            free_pages=usage.free,
            used_pages=usage.used,
            cached_pages=usage.cached,
            page_size=self.pool.page_size,
            flushed=flushed,
            disaggregation=self.pd.stats() if self.pd is not None else None,
            pd_metrics=self.pd.metrics.snapshot() if self.pd is not None else None,
        )

    def close(self) -> None:
        """Stop PD threads and servers (their rooms fail); the engine is done after."""
        if self.pd is not None:
            self.pd.close()
        if self.pd_follower is not None:
            self.pd_follower.close()

    def info(self) -> dict:
        """Facts the front end needs at startup (sent with the ready message)."""
        return {
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "attention_backend": self.attention_name,
            "prefill_attention_backend": self.attention_phases[0],
            "decode_attention_backend": self.attention_phases[1],
            "cuda_graph_batch_sizes": self.cuda_graph_sizes,
            "page_size": self.pool.page_size,
            "tp_size": self.tp.size,
            "dp_size": self.tp.dp_size,
            "dp_rank": self.tp.dp_rank,
            "attn_tp_size": self.tp.attn_size,
            "kv_heads_per_rank": self.pool.shape.num_kv_heads,
            "total_pages": self.pool.allocator.capacity,
            "max_total_tokens": self.pool.max_total_tokens,
            "max_running_requests": self.scheduler.config.max_running_requests,
            "context_length": self.scheduler.config.context_length,
            "max_seq_len": self.scheduler.max_seq_len,
            "vocab_size": self.model_config.vocab_size,
            "eos_token_ids": list(self.model_config.eos_token_ids),
        }


def _attention_factories(
    attention: AttentionSpec,
    server_args: ServerArgs,
    platform,
    config: AttentionConfig,
    kind: str = "mha",
) -> tuple[tuple[str, str], Callable, Callable]:
    """``((prefill name, decode name), prefill factory, decode factory)``. A backend
    spec or a plain factory serves both phases; a name or None goes to the
    registry per phase (``--prefill-attention-backend`` / ``--decode-attention-
    backend`` override it there). A registered backend must fit the model's KV
    ``kind`` ("mha"/"mla"), the page size, the dtype and the head size."""
    if attention is not None and not isinstance(attention, (str, AttentionBackend)):
        name = getattr(attention, "__name__", type(attention).__name__)
        return (name, name), attention, attention
    if isinstance(attention, AttentionBackend):
        phases = (attention, attention)
    else:
        from pdcore.registry import get_registry

        phases = get_registry().select_attention_phases(
            platform,
            attention or server_args.attention_backend,
            server_args.prefill_attention_backend,
            server_args.decode_attention_backend,
            kind,
            str(config.dtype).removeprefix("torch."),
            config.head_dim,
        )
    for spec in phases:
        if spec.kv_layout.kind != kind:
            raise ValueError(
                f"attention backend {spec.name!r} is for {spec.kv_layout.kind.upper()} "
                f"KV caches but this model needs {kind.upper()}"
            )
        if not spec.kv_layout.accepts_page_size(server_args.page_size):
            raise ValueError(
                f"attention backend {spec.name!r} does not accept page size "
                f"{server_args.page_size} (accepts {spec.kv_layout.page_sizes})"
            )
    prefill, decode = phases
    factories = {spec.name: _with_options(spec, server_args.plugin_options) for spec in phases}
    return (prefill.name, decode.name), factories[prefill.name], factories[decode.name]


def _with_options(spec: AttentionBackend, plugin_options: dict) -> Callable:
    """``spec.factory``, handed the options of the plugin that registered ``spec``
    in ``AttentionConfig.options`` (none for a backend passed in directly)."""
    from pdcore.registry import get_registry

    try:
        options = get_registry().options_for("attention", spec.name, plugin_options)
    except PluginError:  # not registered: given as an object (tests, embedders)
        options = {}
    if not options:
        return spec.factory
    return lambda config: spec.factory(dataclasses.replace(config, options=options))
