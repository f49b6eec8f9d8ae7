"""Runs one scheduled batch through the model over the paged KV pool.

Turns the scheduler's per-request token ranges into the flat inputs a
``CausalLM`` takes (token ids, positions) and the ``AttentionMetadata`` the
attention backend plans once per pass, then returns logits only for the rows
that are sampled: the last token of each request whose sequence is complete
(every row of a decode batch). Under DP attention every DP group runs each
forward together (the MLP spans all of them): a leader with nothing scheduled
runs ``idle()``, a pass with no tokens of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from pdcore.attention.base import AttentionImpl, AttentionMetadata
from pdcore.distributed.dp_attention import DPTokens
from pdcore.distributed.state import tp
from pdcore.engine.prompt_logprobs import PromptScores, score_positions
from pdcore.engine.step_delta import PlanMirror, PlanSender
from pdcore.engine.step_plan import StepPlan
from pdcore.kvcache.pool import PADDING_PAGES, KVPool
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.scheduler.scheduler import ScheduledBatch

PAD_PAGE = PADDING_PAGES - 1  # page 0: zeroed, never allocated


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, attn: AttentionImpl, device):
        self.model = model
        self.pool = pool
        self.attn = attn
        self.device = torch.device(device)
        self.ctx = ForwardContext(attn, pool.layer_caches)
        self.graphs = None  # DecodeGraphs once captured (platforms with graphs only)
        # PD prefill under TP: every forward is followed by a KV gather (``KVStage``);
        # followers run ``after_follow`` for their part of it.
        self.stage_after = False
        self.after_follow = None
        self._prompt_scores: PromptScores | None = None  # see ``take_prompt_scores``
        # Under TP the leader sends each forward as a delta of the followers' copy
        # of the running requests' pages (``step_delta``).
        self.sender = PlanSender()
        self.mirror = PlanMirror(pool.page_size)

    def capture_decode_graphs(
        self, make_attention, max_bs: int, context_len: int, platform
    ) -> list[int]:
        """Capture decode passes up to ``max_bs`` rows through ``platform`` (a
        ``Platform`` with ``supports_graphs``); returns the captured batch sizes."""
        from pdcore.engine.cuda_graph import DecodeGraphs

        self.graphs = DecodeGraphs(
            self.model,
            self.pool,
            make_attention,
            self.device,
            max_bs,
            context_len,
            self.ctx.kernels,
            platform,
        )
        return self.graphs.sizes

    def build_inputs(self, plan: StepPlan):
        """``(input_ids, positions, AttentionMetadata)`` on the device for ``plan``.

        Built in numpy and packed into one int64 buffer (tokens, positions, cache
        slots, sequence and extend lengths, page table) that crosses to the device
        in one copy: on a GPU a decode step's host work sits between two forwards,
        and six small copies plus per-row torch ops cost ~0.4 ms of an ~7 ms step."""
        ps = self.pool.page_size
        n = len(plan.extend_lens)
        prefix = np.asarray(plan.prefix_lens, dtype=np.int64)
        extend = np.asarray(plan.extend_lens, dtype=np.int64)
        seq = prefix + extend
        width = int(((seq + ps - 1) // ps).max())
        total = len(plan.tokens)
        host = np.empty(3 * total + 2 * n + n * width, dtype=np.int64)
        tokens, positions, slots = (host[i * total : (i + 1) * total] for i in range(3))
        lens = host[3 * total : 3 * total + 2 * n]
        table = host[3 * total + 2 * n :].reshape(n, width)
        tokens[:] = plan.tokens
        if total == n:  # one token per row (decode): its position is the prefix length
            positions[:] = prefix
        else:
            starts = np.cumsum(extend) - extend  # each row's first index in the flat tokens
            positions[:] = np.arange(total) - np.repeat(starts - prefix, extend)
        table.fill(PAD_PAGE)
        for row, pages in enumerate(plan.pages):
            table[row, : len(pages)] = pages
        rows = np.repeat(np.arange(n), extend)
        slots[:] = table[rows, positions // ps] * ps + positions % ps
        lens[:n], lens[n:] = seq, extend
        flat = torch.from_numpy(host).to(self.device)  # CPU: the same memory, no copy
        at = 3 * total
        meta = AttentionMetadata(
            is_decode=plan.is_decode,
            page_table=flat[at + 2 * n :].view(n, width),
            seq_lens=flat[at : at + n],
            extend_lens=flat[at + n : at + 2 * n],
            cache_slots=flat[2 * total : at],
            seq_lens_cpu=seq.tolist(),
            extend_lens_cpu=list(plan.extend_lens),
        )
        return flat[:total], flat[total : 2 * total], meta

    def forward(
        self, batch: ScheduledBatch, dp_tokens: list[int] | None = None
    ) -> torch.Tensor | None:
        """Float32 logits ``[rows to sample, vocab]``, or None when no row samples.

        A plan with ``prompt_spans`` also scores those prompt positions; the scores
        wait in ``take_prompt_scores``.

        Under tensor parallelism the leader broadcasts the pass first, so every
        follower (``follow``) runs it in step. ``dp_tokens``: DP attention's token
        counts of every DP group in this pass.
        """
        plan = StepPlan.from_batch(batch, self.pool.page_size)
        return self._lead(plan, batch.reqs, dp_tokens)

    def can_overlap(self, batch_size: int, max_seq_len: int) -> bool:
        """A decode step of this size can be launched from device tokens: captured
        graphs take it and no TP follower needs the plan's tokens."""
        return (
            self.graphs is not None
            and tp().size == 1
            and self.graphs.can_run(batch_size, max_seq_len)
        )

    def forward_after(self, plan: StepPlan, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of decode step ``plan`` whose input tokens are still on the device
        (``tokens``: the previous step's samples, row for row); see ``can_overlap``."""
        with torch.inference_mode():
            return self.graphs.run(plan, tokens)

    def idle(self, dp_tokens: list[int]) -> None:
        """DP attention: take part in a forward that only other DP groups feed."""
        self._lead(StepPlan(), [], dp_tokens)

    def _lead(self, plan: StepPlan, reqs: list, dp_tokens: list[int] | None) -> torch.Tensor | None:
        plan.pd_stage = self.stage_after
        plan.dp_tokens = dp_tokens
        if tp().attn_size > 1:
            self.sender.send(self.sender.delta(plan, reqs))
        return self.execute(plan)

    def stop_followers(self) -> None:
        """Leader: tell this engine's followers to exit their ``follow`` loop."""
        if tp().attn_size > 1:
            self.sender.send(self.sender.stop())

    def follow(self) -> bool:
        """Follower ranks: run the leader's next pass; False when told to stop."""
        plan = self.mirror.receive()
        if plan.stop:
            return False
        self.execute(plan)
        if plan.pd_stage and self.after_follow is not None:
            self.after_follow()
        return True

    def execute(self, plan: StepPlan) -> torch.Tensor | None:
        if plan.dp_tokens is not None:
            self.ctx.dp = DPTokens(plan.dp_tokens)
            if not plan.extend_lens:
                self._idle_pass(self.ctx.dp.total)
                return None
        with torch.inference_mode():
            graphs = self.graphs
            if plan.is_decode and graphs and graphs.can_run(len(plan.tokens), max(plan.seq_lens)):
                return graphs.run(plan)  # every decode row samples
            input_ids, positions, meta = self.build_inputs(plan)
            self.attn.plan(meta)
            hidden = self.model(input_ids, positions, self.ctx)
            if plan.prompt_spans:  # every TP rank scores them (the logits gather is collective)
                self._prompt_scores = self._score_prompt(plan, hidden)
            ends = torch.tensor(plan.extend_lens).cumsum(0) - 1
            picked = ends[torch.tensor(plan.sample, dtype=torch.bool)]
            if picked.numel() == 0:
                return None
            return self.model.compute_logits(hidden[picked.to(hidden.device)]).float()

    def take_prompt_scores(self) -> PromptScores | None:
        """The prompt logprobs the last forward scored (once), or None."""
        scores, self._prompt_scores = self._prompt_scores, None
        return scores

    def _score_prompt(self, plan: StepPlan, hidden: torch.Tensor) -> PromptScores:
        rows = _span_rows(plan).to(hidden.device)
        targets = torch.tensor(plan.prompt_targets, dtype=torch.int64, device=hidden.device)
        return score_positions(self.model.compute_logits, hidden[rows], targets, plan.prompt_top)

    def _idle_pass(self, total_tokens: int) -> None:
        """No tokens here: attention is skipped, the MLP's collectives still run
        (unless no DP group has tokens either: then nobody runs anything)."""
        if total_tokens == 0:
            return
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            self.model(empty, empty, self.ctx)


def _span_rows(plan: StepPlan) -> torch.Tensor:
    """Flat token indices of every row's ``prompt_spans`` positions, in row order."""
    starts = np.cumsum(plan.extend_lens) - np.asarray(plan.extend_lens)
    idx = [np.arange(s + lo, s + hi) for s, (lo, hi) in zip(starts, plan.prompt_spans, strict=True)]
    return torch.from_numpy(np.concatenate(idx).astype(np.int64))
