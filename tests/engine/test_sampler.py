"""Sampler: greedy/top_k, seeds, penalties, masks, and raw-logit logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from pdcore.engine.sampler import Sampler, allowed_mask, apply_penalties
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.request import Req

V = 32


def req(rid="r", prompt=(5,), output=(), **params) -> Req:
    r = Req(rid, list(prompt), SamplingParams(**params))
    r.output_ids = list(output)
    return r


def logits(rows, seed=0):
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_one_is_greedy():
    x = logits(6)
    sampler = Sampler(seed=1)
    greedy = sampler(x, [req(str(i), temperature=0.0) for i in range(6)])
    top1 = sampler(x, [req(str(i), temperature=1.5, top_k=1) for i in range(6)])
    expect = x.argmax(-1).tolist()
    assert [s.token_id for s in greedy] == expect
    assert [s.token_id for s in top1] == expect


def test_seeded_requests_do_not_depend_on_the_batch():
    x = logits(1, seed=3)[0]

    def run(batch_before, batch_after, steps=8):
        sampler = Sampler(seed=123)
        target = req("t", seed=7)
        others = [req(f"o{i}", temperature=0.8) for i in range(batch_before + batch_after)]
        others += [req("s", seed=99)]
        got = []
        for step in range(steps):
            reqs = [*others[:batch_before], target, *others[batch_before:]]
            batch = torch.stack([x + 0.1 * step] * len(reqs))
            got.append(sampler(batch, reqs)[batch_before].token_id)
        return got

    alone = run(0, 0)
    assert run(3, 2) == alone
    assert run(1, 0) == alone
    assert len(set(alone)) > 1, "the seeded stream advances between steps"
    other_seed = Sampler()(torch.stack([x] * 8), [req(str(i), seed=i) for i in range(8)])
    assert len({s.token_id for s in other_seed}) > 1, "different seeds, different draws"


def test_unseeded_sampling_follows_the_distribution():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)])
    n = 4000
    reqs = [req(str(i), temperature=1.0) for i in range(n)]
    tokens = torch.tensor([s.token_id for s in Sampler(seed=5)(x.expand(n, V), reqs)])
    freq = torch.bincount(tokens, minlength=V).double() / n
    expect = torch.softmax(x[0].double(), -1)
    assert torch.allclose(freq[:4], expect[:4], atol=0.03)
    assert freq[4:].sum() == 0


def test_repetition_penalty_follows_hf():
    x = torch.zeros(1, V)
    x[0, :4] = torch.tensor([2.0, -2.0, 1.0, 3.0])
    out = apply_penalties(x, [req(prompt=[0, 1], output=[2], repetition_penalty=2.0)], [])
    assert out[0, :4].tolist() == [1.0, -4.0, 0.5, 3.0]
    assert x[0, 0] == 2.0, "the raw logits are not modified"


def test_frequency_and_presence_penalties_count_output_only():
    x = torch.zeros(1, V)
    r = req(prompt=[4, 4, 4], output=[2, 2, 3], frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(x, [r], [])
    assert out[0, 2].item() == pytest.approx(-(2 * 0.5 + 0.25))
    assert out[0, 3].item() == pytest.approx(-(0.5 + 0.25))
    assert out[0, 4].item() == 0.0, "prompt tokens are not penalized"


def test_min_new_tokens_masks_eos_and_stop_ids():
    x = torch.zeros(2, V)
    x[:, 1] = 10.0  # eos
    x[:, 9] = 9.0  # stop id
    early = req("a", output=[3], min_new_tokens=2, stop_token_ids=[9], temperature=0.0)
    done = req("b", output=[3, 3], min_new_tokens=2, stop_token_ids=[9], temperature=0.0)
    got = Sampler()(x, [early, done], eos_token_ids=[1])
    assert got[0].token_id not in (1, 9)
    assert got[1].token_id == 1


def test_allowed_mask_top_k_top_p_min_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])

    def kept(top_k=-1, top_p=1.0, min_p=0.0):
        mask = allowed_mask(
            probs, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p])
        )
        return set(torch.nonzero(mask[0]).flatten().tolist())

    assert kept() == {0, 1, 2, 3}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_p=0.7) == {1, 3}
    assert kept(top_p=0.8) == {1, 3}, "0.5 + 0.3 already reaches 0.8"
    assert kept(top_p=0.81) == {1, 2, 3}
    assert kept(top_p=0.01) == {1}, "the most likely token is always kept"
    assert kept(min_p=0.5) == {1, 3}
    assert kept(min_p=0.7) == {1}
    assert kept(top_k=3, min_p=0.4) == {1, 3}


def test_sampling_never_leaves_the_allowed_set():
    x = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3] + [1e-9] * (V - 4)))
    n = 500
    sampler = Sampler(seed=2)
    for params, allowed in (
        (dict(top_p=0.7), {1, 3}),
        (dict(min_p=0.5), {1, 3}),
        (dict(top_k=3), {1, 2, 3}),
    ):
        reqs = [req(str(i), **params) for i in range(n)]
        tokens = {s.token_id for s in sampler(x.expand(n, V), reqs)}
        assert tokens == allowed, params


def test_logprobs_are_of_the_raw_logits():
    x = logits(3, seed=4)
    reqs = [
        req("a", output=[0, 0], temperature=0.3, repetition_penalty=3.0, frequency_penalty=2.0),
        req("b", temperature=0.0, presence_penalty=1.5, output=[int(x[1].argmax())]),
        req("c", temperature=2.0, top_k=3),
    ]
    for r in reqs:
        r.return_logprob, r.top_logprobs_num = True, 5
    got = Sampler(seed=0)(x, reqs)
    raw = torch.log_softmax(x, -1)
    for i, s in enumerate(got):
        assert s.logprob == pytest.approx(raw[i, s.token_id].item(), abs=1e-6)
        vals, ids = raw[i].topk(5)
        assert [t for t, _ in s.top_logprobs] == ids.tolist()
        assert [v for _, v in s.top_logprobs] == pytest.approx(vals.tolist(), abs=1e-6)
        assert all(math.isfinite(v) for _, v in s.top_logprobs)
    assert got[1].token_id != int(x[1].argmax()), "the presence penalty moved the argmax"


def test_no_logprobs_unless_asked():
    got = Sampler()(logits(2), [req("a"), req("b", temperature=0.0)])
    assert all(s.logprob is None and s.top_logprobs is None for s in got)
