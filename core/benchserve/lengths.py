"""How request lengths were chosen, said in words: the rule (``--random-range-ratio``)
and the lengths actually drawn, so nobody reads a run of 1..1024-token prompts as a
run of 1024-token prompts.

The rule is SGLang's ``bench_serving``: ``--random-input-len N`` with ratio ``r``
draws each prompt length uniformly from ``[max(int(N*r), 1), N]``; the default ratio
0.0 therefore means "anywhere from 1 to N" and 1.0 means exactly N. Output lengths
follow the same rule, except that pdcore never asks for 0 tokens (SGLang's lower
output bound is ``int(N*r)``, which can be 0).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pdcore.benchserve.datasets import length_range

RATIO_DATASETS = ("random", "synthetic-conversations")


def spread(values: Sequence[int]) -> str:
    """``min/median/max`` of ``values`` ("-" without any)."""
    if not values:
        return "-"
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


def rule(dataset: str, input_len: int, output_len: int, ratio: float) -> str | None:
    """The drawing rule for ``dataset``, or None where lengths come from the data."""
    if dataset not in RATIO_DATASETS:
        return None
    in_lo, in_hi = length_range(input_len, ratio)
    out_lo, out_hi = length_range(output_len, ratio)
    unit = "words" if dataset == "synthetic-conversations" else "tokens"
    if ratio == 1.0:
        drawn = f"input {unit} exactly {in_hi}, output tokens exactly {out_hi}"
    else:
        drawn = (
            f"input {unit} uniformly from [{in_lo}, {in_hi}], "
            f"output tokens from [{out_lo}, {out_hi}]"
        )
    return f"--random-range-ratio {ratio:g}: {drawn} (0, SGLang's default, draws from 1 to len)"


def header(dataset: str, input_len: int, output_len: int, ratio: float, inputs, outputs) -> str:
    """One line: the rule, then the input and output lengths actually drawn."""
    drawn = f"drawn input lengths min/median/max {spread(inputs)}, output {spread(outputs)}"
    how = rule(dataset, input_len, output_len, ratio)
    return drawn if how is None else f"{how}; {drawn}"
