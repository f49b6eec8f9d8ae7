"""Stop-string matching on detokenized text.

The engine sees token ids only, so stop strings are found here, in text that
grows a few characters per step; a match may span any number of tokens. While a
request runs, a tail that could still become a stop string is held back from
streaming so that a client never sees text that is later cut.
"""

from __future__ import annotations


def find_stop(text: str, stops: list[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest ``(position, stop)`` at or after ``start``; ties go to the longest stop."""
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop, start)
        if pos < 0:
            continue
        if best is None or pos < best[0] or (pos == best[0] and len(stop) > len(best[1])):
            best = (pos, stop)
    return best


def scan_start(previous_len: int, stops: list[str]) -> int:
    """Where to resume searching after text grew past ``previous_len`` characters."""
    longest = max((len(s) for s in stops), default=1)
    return max(0, previous_len - longest + 1)


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
