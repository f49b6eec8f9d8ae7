"""Prompt logprobs: ``log_softmax`` of the logits at prompt positions, scored on the next token.

A forward whose plan has ``prompt_spans`` scores those positions: the logits at
prompt position ``p`` score prompt token ``p + 1`` (``StepPlan.prompt_targets``).
Like output logprobs these come from the raw logits (no temperature or
penalties), as SGLang and vLLM report them; each position also gets the token's
rank (1: the most likely), which vLLM's ``prompt_logprobs`` reports. Logits are
made ``SCORE_CHUNK`` positions at a time, so a long prompt never holds a
``[prompt, vocab]`` float32 tensor (SGLang chunks its prompt logits too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pdcore.scheduler.request import Req

SCORE_CHUNK = 1024  # positions per logits tensor: 1024 x 152k vocab x 4 B = 0.6 GB


@dataclass
class PromptScores:
    """Per scored position, in plan order: the target's logprob and rank, the top-k."""

    logprobs: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)


def score_positions(
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    top_n: int,
) -> PromptScores:
    """Score ``targets[i]`` with the logits of ``hidden[i]``, a chunk at a time."""
    out = PromptScores()
    for at in range(0, hidden.shape[0], SCORE_CHUNK):
        logp = torch.log_softmax(compute_logits(hidden[at : at + SCORE_CHUNK]).float(), dim=-1)
        chosen = logp.gather(1, targets[at : at + SCORE_CHUNK, None])
        out.ranks.extend(((logp > chosen).sum(-1) + 1).tolist())
        out.logprobs.extend(chosen.squeeze(1).tolist())
        if top_n:
            vals, ids = logp.topk(top_n, dim=-1)
            out.top_logprobs.extend(vals.tolist())
            out.top_ids.extend(ids.tolist())
    return out


def add_prompt_logprobs(
    scores: PromptScores, reqs: Sequence[Req], prefix_lens: Sequence[int], extend_lens
) -> None:
    """Append each request's share of ``scores`` (its ``prompt_logprob_span``, in order)."""
    at = 0
    for req, start, ext in zip(reqs, prefix_lens, extend_lens, strict=True):
        lo, hi = req.prompt_logprob_span(start, ext)
        n = hi - lo
        if not n:
            continue
        req.input_logprobs.extend(scores.logprobs[at : at + n])
        req.input_ranks.extend(scores.ranks[at : at + n])
        if req.top_logprobs_num:
            k = req.top_logprobs_num
            req.input_top_logprobs.extend(
                [[t, v] for t, v in zip(ids[:k], vals[:k], strict=True)]
                for ids, vals in zip(
                    scores.top_ids[at : at + n], scores.top_logprobs[at : at + n], strict=True
                )
            )
        at += n
