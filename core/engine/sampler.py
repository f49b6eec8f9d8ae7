"""Batched next-token sampling from the model's float32 logits.

Order per row (as HF and SGLang): repetition penalty (over prompt + output,
HF's rule: positive logits divided, negative multiplied), frequency/presence
penalties (over output tokens, OpenAI's ``logit -= f * count + p * [count > 0]``),
``min_new_tokens`` masking of EOS/stop ids; then greedy rows take the argmax,
the others divide by temperature, keep the top_k / top_p / min_p set and
sample. Sampling uses the exponential race (argmax of ``p / Exp(1)`` noise,
equivalent to drawing from ``p``) with the noise of a seeded request drawn
from its own generator, so its tokens do not depend on what else is batched.
Reported logprobs are ``log_softmax`` of the raw logits (before temperature and
penalties), as OpenAI and SGLang report them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdcore.platform import CpuPlatform, Platform
from pdcore.scheduler.request import Req
from pdcore.scheduler.scheduler import Sampled


def apply_penalties(logits: torch.Tensor, reqs: Sequence[Req], eos_token_ids) -> torch.Tensor:
    """Penalized copy of ``logits`` (or ``logits`` itself when no row needs any)."""
    out = None
    vocab = logits.shape[-1]
    for i, req in enumerate(reqs):
        p = req.params
        banned = []
        if len(req.output_ids) < p.min_new_tokens:
            banned = list(p.stop_token_ids) + ([] if p.ignore_eos else list(eos_token_ids))
        freq = (p.frequency_penalty or p.presence_penalty) and req.output_ids
        if p.repetition_penalty == 1.0 and not freq and not banned:
            continue
        if out is None:
            out = logits.clone()
        row = out[i]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.input_ids).union(req.output_ids)), device=row.device)
            vals = row[seen]
            rp = p.repetition_penalty
            row[seen] = torch.where(vals > 0, vals / rp, vals * rp)
        if freq:
            ids = torch.tensor(req.output_ids, device=row.device)
            counts = torch.bincount(ids, minlength=vocab)[:vocab].to(row.dtype)
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
        if banned:
            row[torch.tensor(banned, device=row.device)] = float("-inf")
    return logits if out is None else out


def allowed_mask(
    probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Bool ``[B, V]``: tokens kept by top_k, then top_p, then min_p (the top one always).

    ``top_k`` <= 0 keeps all; top_p keeps the smallest head of the sorted
    distribution whose mass reaches top_p; min_p keeps ``p >= min_p * p_max``.
    """
    sorted_p, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[-1], device=probs.device)
    k = torch.where(top_k > 0, top_k, probs.shape[-1])
    keep = ranks[None, :] < k[:, None]
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep &= (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    keep &= sorted_p >= min_p[:, None] * sorted_p[:, :1]
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


class Sampler:
    def __init__(
        self, device: torch.device | str = "cpu", seed: int = 0, platform: Platform | None = None
    ):
        self.device = torch.device(device)
        self.platform = platform or CpuPlatform()
        # Noise for requests without a seed: one stream for the engine, from --random-seed.
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, reqs: Sequence[Req], eos_token_ids=()
    ) -> list[Sampled]:
        raw = logits.float()
        return self._results(raw, self.tokens(raw, reqs, eos_token_ids), reqs)

    def _on(self, device: torch.device, values, dtype) -> torch.Tensor:
        """``values`` as a tensor on ``device``, without making the host wait for the
        device (a plain host-to-device copy would wait for the step in flight: overlap
        scheduling samples a step before the previous one finished)."""
        return self.platform.to_device_async(torch.tensor(values, dtype=dtype), device)

    @staticmethod
    def overlappable(req: Req) -> bool:
        """Its next token can be drawn before its last one reaches the host: nothing
        about it depends on the output so far (penalties, ``min_new_tokens``) and only
        the token itself is read back (no logprobs)."""
        p = req.params
        return (
            not req.return_logprob
            and not req.top_logprobs_num
            and p.repetition_penalty == 1.0
            and not p.frequency_penalty
            and not p.presence_penalty
            and len(req.output_ids) >= p.min_new_tokens
        )

    def tokens(self, logits: torch.Tensor, reqs: Sequence[Req], eos_token_ids=()) -> torch.Tensor:
        """The next token of every row, on the logits' device (no host sync)."""
        raw = logits.float()
        x = apply_penalties(raw, reqs, eos_token_ids)
        greedy = [i for i, r in enumerate(reqs) if r.params.greedy]
        if len(greedy) == len(reqs):
            tokens = x.argmax(-1)
        else:
            tokens = torch.empty(len(reqs), dtype=torch.int64, device=x.device)
            if greedy:
                rows = self._on(x.device, greedy, torch.int64)
                tokens[rows] = x[rows].argmax(-1)
            rand = [i for i, r in enumerate(reqs) if not r.params.greedy]
            rows = self._on(x.device, rand, torch.int64)
            tokens[rows] = self._sample(x[rows], [reqs[i] for i in rand])
        return tokens

    def _sample(self, x: torch.Tensor, reqs: Sequence[Req]) -> torch.Tensor:
        def col(values, dtype):
            return self._on(x.device, values, dtype)

        temps = col([r.params.temperature for r in reqs], x.dtype)
        probs = torch.softmax(x / temps[:, None], dim=-1)
        mask = allowed_mask(
            probs,
            col([r.params.top_k for r in reqs], torch.int64),
            col([r.params.top_p for r in reqs], x.dtype),
            col([r.params.min_p for r in reqs], x.dtype),
        )
        probs = probs.masked_fill(~mask, 0.0)
        return (probs / self._noise(reqs, probs.shape[-1])).argmax(-1)

    def _noise(self, reqs: Sequence[Req], vocab: int) -> torch.Tensor:
        noise = torch.empty(len(reqs), vocab, device=self.device)
        shared = [i for i, r in enumerate(reqs) if r.params.seed is None]
        if shared:
            draw = torch.empty(len(shared), vocab, device=self.device)
            noise[self._on(self.device, shared, torch.int64)] = draw.exponential_(
                generator=self.generator
            )
        for i, req in enumerate(reqs):
            if req.params.seed is not None:
                if req.generator is None:
                    req.generator = torch.Generator(self.device).manual_seed(req.params.seed)
                noise[i].exponential_(generator=req.generator)
        return noise.clamp_min_(1e-20)

    @staticmethod
    def _results(raw: torch.Tensor, tokens: torch.Tensor, reqs: Sequence[Req]) -> list[Sampled]:
        ids = tokens.tolist()
        want_lp = [r.return_logprob for r in reqs]
        top_n = max((r.top_logprobs_num for r in reqs), default=0)
        if not any(want_lp) and not top_n:
            return [Sampled(t) for t in ids]
        logp = torch.log_softmax(raw, dim=-1)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
        if top_n:
            top_vals, top_ids = logp.topk(top_n, dim=-1)
            top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
        out = []
        for i, req in enumerate(reqs):
            top = None
            if req.top_logprobs_num:
                n = req.top_logprobs_num
                top = [[t, v] for t, v in zip(top_ids[i][:n], top_vals[i][:n], strict=True)]
            out.append(Sampled(ids[i], chosen[i] if want_lp[i] else None, top))
        return out
