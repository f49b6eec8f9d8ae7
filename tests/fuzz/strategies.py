"""Hypothesis strategies for hostile request values (numbers, text, containers)."""

from __future__ import annotations

import math

from hypothesis import strategies as st

EDGE_INTS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63) - 1]
NON_FINITE = [math.nan, math.inf, -math.inf]

surrogates = st.characters(categories=["Cs"])
# Controls, NUL, bidi overrides, combining marks, zero-width joiners, emoji, private use.
odd_chars = st.sampled_from(
    ["\x00", "\x7f", "\u202e", "\u200d", "\ufeff", "\u0301", "\U0001f600", "\ue000", "\uffff"]
)
valid_text = st.text(st.one_of(st.characters(), odd_chars), max_size=12)
ascii_text = st.text(st.characters(max_codepoint=127), min_size=1, max_size=12)
any_text = st.text(st.one_of(st.characters(), odd_chars, surrogates), max_size=12)

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NON_FINITE),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), any_text)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(any_text, scalars, max_size=3),
)


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return False


def non_finite(value) -> bool:
    """A NaN/inf as the value or in a list (a dict's unknown keys may be ignored)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return False
