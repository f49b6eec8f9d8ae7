"""Prompt logprobs: ``log_softmax`` of the logits at prompt positions, scored on the next token.

The forward returns, after the sampled rows, the logits of every position a row's
``Req.prompt_logprob_span`` names (see ``StepPlan.prompt_spans``); the logits at
prompt position ``p`` score prompt token ``p + 1``. Like output logprobs these are
taken from the raw logits (no temperature or penalties), as SGLang and vLLM
report them. Each position also gets the token's rank in the distribution (1:
the most likely), which vLLM's ``prompt_logprobs`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdcore.scheduler.request import Req


def add_prompt_logprobs(
    logits: torch.Tensor, reqs: Sequence[Req], prefix_lens: Sequence[int], extend_lens
) -> None:
    """Append to each request the logprobs its span of ``logits`` rows gives."""
    spans, targets = [], []
    for req, start, ext in zip(reqs, prefix_lens, extend_lens, strict=True):
        lo, hi = req.prompt_logprob_span(start, ext)
        spans.append(hi - lo)
        targets.extend(req.input_ids[start + lo + 1 : start + hi + 1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets, dtype=torch.int64, device=logp.device)
    chosen = logp.gather(1, target[:, None])
    ranks = ((logp > chosen).sum(-1) + 1).tolist()
    chosen = chosen.squeeze(1).tolist()
    top_n = max((r.top_logprobs_num for r, n in zip(reqs, spans, strict=True) if n), default=0)
    if top_n:
        top_vals, top_ids = logp.topk(top_n, dim=-1)
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    at = 0
    for req, n in zip(reqs, spans, strict=True):
        if not n:
            continue
        req.input_logprobs.extend(chosen[at : at + n])
        req.input_ranks.extend(ranks[at : at + n])
        if req.top_logprobs_num:
            k = req.top_logprobs_num
            req.input_top_logprobs.extend(
                [[t, v] for t, v in zip(ids[:k], vals[:k], strict=True)]
                for ids, vals in zip(top_ids[at : at + n], top_vals[at : at + n], strict=True)
            )
        at += n
