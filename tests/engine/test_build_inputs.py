"""``ModelRunner.build_inputs``: the packed numpy builder gives the plain per-row answer."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from pdcore.engine.model_runner import PAD_PAGE, ModelRunner
from pdcore.engine.step_plan import StepPlan


def reference(plan: StepPlan, ps: int):
    """Row by row, the obvious way."""
    seq = plan.seq_lens
    width = max(-(-s // ps) for s in seq)
    table = torch.full((len(seq), width), PAD_PAGE, dtype=torch.int64)
    positions, slots = [], []
    for row, (start, ext, pages) in enumerate(
        zip(plan.prefix_lens, plan.extend_lens, plan.pages, strict=True)
    ):
        table[row, : len(pages)] = torch.tensor(pages)
        for pos in range(start, start + ext):
            positions.append(pos)
            slots.append(pages[pos // ps] * ps + pos % ps)
    return {
        "input_ids": plan.tokens,
        "positions": positions,
        "cache_slots": slots,
        "seq_lens": seq,
        "extend_lens": plan.extend_lens,
        "page_table": table.tolist(),
    }


def built(plan: StepPlan, ps: int):
    runner = SimpleNamespace(pool=SimpleNamespace(page_size=ps), device=torch.device("cpu"))
    ids, positions, meta = ModelRunner.build_inputs(runner, plan)
    assert meta.seq_lens_cpu == plan.seq_lens and meta.extend_lens_cpu == plan.extend_lens
    assert meta.is_decode == plan.is_decode
    return {
        "input_ids": ids.tolist(),
        "positions": positions.tolist(),
        "cache_slots": meta.cache_slots.tolist(),
        "seq_lens": meta.seq_lens.tolist(),
        "extend_lens": meta.extend_lens.tolist(),
        "page_table": meta.page_table.tolist(),
    }


def make_plan(rng: random.Random, rows: int, decode: bool, ps: int) -> StepPlan:
    prefix, extend, pages, tokens = [], [], [], []
    free = list(range(1, 4000))
    rng.shuffle(free)
    for _ in range(rows):
        p = rng.randint(0, 300)
        e = 1 if decode else rng.randint(1, 200)
        n_pages = -(-(p + e) // ps)
        prefix.append(p)
        extend.append(e)
        pages.append([free.pop() for _ in range(n_pages)])
        tokens.extend(rng.randint(0, 50000) for _ in range(e))
    return StepPlan(decode, tokens, prefix, extend, pages, [True] * rows)


@pytest.mark.parametrize("decode", [True, False], ids=["decode", "extend"])
@pytest.mark.parametrize("ps", [1, 16, 64])
def test_packed_inputs_equal_the_row_by_row_reference(decode, ps):
    rng = random.Random(ps * 2 + decode)
    for rows in (1, 3, 17):
        plan = make_plan(rng, rows, decode, ps)
        got, want = built(plan, ps), reference(plan, ps)
        for key in want:
            assert got[key] == want[key], f"{key} differs ({rows} rows, page {ps})"


def test_rows_of_unequal_width_pad_with_the_padding_page():
    plan = StepPlan(False, [5, 6, 7], [0, 40], [2, 1], [[9], [3, 4, 8]], [True, True])
    table = built(plan, 16)["page_table"]
    assert table == [[9, PAD_PAGE, PAD_PAGE], [3, 4, 8]]
