"""What to send: random token prompts, a ShareGPT file, or built-in synthetic conversations.

Every generator is deterministic for a given seed, so two runs (or two servers)
get the same requests. Problems with the input name the flag to fix.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pdcore.errors import ConfigError

# SGLang's bench_serving keeps ShareGPT pairs inside these bounds (tokens).
SHAREGPT_MIN_LEN = 2
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class RequestSpec:
    """One request: a prompt (token ids or text), its length and the tokens to generate.

    ``prompt_len`` is exact for token ids and a local count for text (the server's
    own count, when it reports one, is what the results use).
    """

    prompt: list[int] | str
    prompt_len: int
    output_len: int


def length_range(target: int, range_ratio: float) -> tuple[int, int]:
    """Lengths drawn for ``--random-*-len target`` (SGLang: ``[target*ratio, target]``)."""
    return max(int(target * range_ratio), 1), target


def random_requests(
    num: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int,
    tokenizer: TextTokenizer | None = None,
) -> list[RequestSpec]:
    """Prompts of uniformly random token ids; with ``tokenizer`` they become text.

    Token-id prompts have exactly the drawn length. Text prompts are decoded from
    the ids and trimmed so they re-encode to at most that length (as close as a
    tokenizer's merges allow).
    """
    rng = random.Random(seed)
    in_lo, in_hi = length_range(input_len, range_ratio)
    out_lo, out_hi = length_range(output_len, range_ratio)
    specs = []
    for _ in range(num):
        n_in, n_out = rng.randint(in_lo, in_hi), rng.randint(out_lo, out_hi)
        ids = [rng.randrange(vocab_size) for _ in range(n_in)]
        if tokenizer is None:
            specs.append(RequestSpec(ids, n_in, n_out))
        else:
            text = _text_of_length(tokenizer, ids, n_in)
            specs.append(RequestSpec(text, len(tokenizer.encode(text)), n_out))
    return specs


def _text_of_length(tokenizer: TextTokenizer, ids: list[int], length: int) -> str:
    text = tokenizer.decode(ids)
    again = tokenizer.encode(text)
    return text if len(again) <= length else tokenizer.decode(again[:length])


def sharegpt_requests(
    path: str | None,
    num: int,
    tokenizer: TextTokenizer,
    seed: int,
    fixed_output_len: int | None = None,
) -> list[RequestSpec]:
    """The first human turn of each conversation as the prompt, the reply's length as
    the output length (or ``fixed_output_len``); pairs outside SGLang's bounds are
    skipped, the rest shuffled with ``seed``; fewer than ``num`` if the file runs out.
    """
    pairs = load_sharegpt(path)
    random.Random(seed).shuffle(pairs)
    specs = []
    for prompt, completion in pairs:
        if len(specs) == num:
            break
        prompt_len = len(tokenizer.encode(prompt))
        out_len = fixed_output_len or len(tokenizer.encode(completion))
        too_short = prompt_len < SHAREGPT_MIN_LEN or out_len < SHAREGPT_MIN_LEN
        too_long = prompt_len > SHAREGPT_MAX_PROMPT or prompt_len + out_len > SHAREGPT_MAX_TOTAL
        if not (too_short or too_long):
            specs.append(RequestSpec(prompt, prompt_len, out_len))
    if not specs:
        raise ConfigError(
            "--dataset-path",
            f"{path}: no conversation has a prompt of {SHAREGPT_MIN_LEN}..{SHAREGPT_MAX_PROMPT} "
            f"tokens and a reply of at least {SHAREGPT_MIN_LEN}",
        )
    return specs


def load_sharegpt(path: str | None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` from each conversation with at least two turns."""
    flag = "--dataset-path"
    if not path:
        raise ConfigError(flag, "required with --dataset-name sharegpt (a ShareGPT JSON file)")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(flag, f"no such file: {path}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(flag, f"{path} is not valid JSON: {e}") from None
    expected = 'a list of {"conversations": [{"from": ..., "value": ...}, ...]}'
    if not isinstance(data, list):
        raise ConfigError(flag, f"{path} is not ShareGPT format: expected {expected}")
    pairs = []
    for i, entry in enumerate(data):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            raise ConfigError(
                flag, f"{path}: entry {i} has no 'conversations' list (expected {expected})"
            )
        if len(turns) < 2:
            continue
        texts = [_turn_text(t) for t in turns[:2]]
        if None in texts:
            raise ConfigError(
                flag, f"{path}: entry {i} has a turn without a text 'value' (expected {expected})"
            )
        pairs.append((texts[0], texts[1]))
    if not pairs:
        raise ConfigError(flag, f"{path} has no conversation with two turns")
    return pairs


def _turn_text(turn) -> str | None:
    """A turn's text: ShareGPT's ``value`` or the OpenAI-style ``content``."""
    if not isinstance(turn, dict):
        return None
    text = turn.get("value", turn.get("content"))
    return text if isinstance(text, str) else None


# -- synthetic conversations ------------------------------------------------------------------

_WORDS = (
    "the a of to and in is it that for on with as was by at be this from or an are not but "
    "have one all were we when your can said there use each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water been call who oil "
    "its now find long down day did get come made may part over new sound take only little "
    "work know place year live me back give most very after thing our just name good sentence "
    "man think say great where help through much before line right too mean old any same tell "
    "boy follow came want show also around form three small set put end does another well large"
).split()


def synthetic_conversations(
    num: int,
    turns: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    seed: int,
) -> list[RequestSpec]:
    """``num`` requests from multi-turn chats: turn k's prompt is the whole history
    (earlier user messages and canned replies) plus a new message, so consecutive
    turns share a growing prefix, as real chat traffic does. Requests are ordered
    turn by turn across conversations and do not wait for one another.

    Lengths are in words (about one token each for this vocabulary).
    """
    rng = random.Random(seed)
    in_lo, in_hi = length_range(input_len, range_ratio)
    out_lo, out_hi = length_range(output_len, range_ratio)
    n_convs = -(-num // turns)
    histories = [""] * n_convs
    specs: list[RequestSpec] = []
    for _ in range(turns):
        for c in range(n_convs):
            if len(specs) == num:
                return specs
            message = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(in_lo, in_hi)))
            prompt = f"{histories[c]}User: {message}\nAssistant:"
            n_out = rng.randint(out_lo, out_hi)
            specs.append(RequestSpec(prompt, len(prompt.split()), n_out))
            reply = " ".join(rng.choice(_WORDS) for _ in range(n_out))
            histories[c] = f"{prompt} {reply}\n"
    return specs
