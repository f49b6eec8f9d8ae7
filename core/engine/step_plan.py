"""``StepPlan``: one forward pass as plain data, so every TP rank can run it.

The leader's scheduler turns a ``ScheduledBatch`` into a plan; under tensor
parallelism each follower gets the same plan (sent as a delta of the running
requests, ``step_delta``) and builds the very same inputs from it (token ids,
positions, page table), so all ranks run identical forwards over their shard
of the weights and KV heads. A plan with ``stop=True`` tells followers to exit.
Under DP attention a plan may have no rows (its group idles while another
computes) and carries every DP group's token count (``dp_tokens``), which the
DP leaders traded before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepPlan:
    is_decode: bool = False
    tokens: list[int] = field(default_factory=list)  # every row's new tokens, concatenated
    prefix_lens: list[int] = field(default_factory=list)
    extend_lens: list[int] = field(default_factory=list)
    pages: list[list[int]] = field(default_factory=list)  # per row, pages covering the sequence
    sample: list[bool] = field(default_factory=list)
    stop: bool = False
    # PD prefill under TP: after this forward the leader names pages to gather
    # (``KVStage``), so followers take part in one more collective.
    pd_stage: bool = False
    dp_tokens: list[int] | None = None  # DP attention: every DP group's tokens this forward
    # Prompt logprobs (``pdcore.engine.prompt_logprobs``): per row, offsets ``[lo, hi)``
    # of its fed tokens to score; the token each of those positions scores, row by
    # row; and the top-k to report with them.
    prompt_spans: list[tuple[int, int]] = field(default_factory=list)
    prompt_targets: list[int] = field(default_factory=list)
    prompt_top: int = 0

    @classmethod
    def from_batch(cls, batch, page_size: int) -> StepPlan:
        tokens, pages, spans, targets, top = [], [], [], [], 0
        for req, start, ext in zip(batch.reqs, batch.prefix_lens, batch.extend_lens, strict=True):
            tokens.extend(req.tokens(start, start + ext))
            pages.append(list(req.pages[: -(-(start + ext) // page_size)]))
            lo, hi = req.prompt_logprob_span(start, ext)
            spans.append((lo, hi))
            if hi > lo:
                targets.extend(req.input_ids[start + lo + 1 : start + hi + 1])
                top = max(top, req.top_logprobs_num)
        return cls(
            is_decode=batch.is_decode,
            tokens=tokens,
            prefix_lens=list(batch.prefix_lens),
            extend_lens=list(batch.extend_lens),
            pages=pages,
            sample=list(batch.sample),
            prompt_spans=spans if targets else [],
            prompt_targets=targets,
            prompt_top=top,
        )

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens, strict=True)]
