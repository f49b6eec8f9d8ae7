"""Dataset generation: lengths inside the asked ranges, ShareGPT parsing and its errors,
synthetic conversations that share prefixes; all reproducible from the seed."""

from __future__ import annotations

import json

import pytest

from pdcore.benchserve.datasets import (
    random_requests,
    sharegpt_requests,
    synthetic_conversations,
)
from pdcore.errors import ConfigError


class WordTokenizer:
    """One token per whitespace-separated word; ids index a growing vocabulary."""

    def __init__(self):
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
            ids.append(self.words.index(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] if i < len(self.words) else f"w{i}" for i in ids)


class CharTokenizer:
    """One token per character (ids = code points); a random id below 97 decodes to two
    letters, so random ids re-encode to more tokens than drawn, as merges can do."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) if i >= 97 else chr(97 + i % 26) * 2 for i in ids)


def test_random_token_prompts_have_lengths_in_range_and_ids_in_vocab():
    specs = random_requests(200, 100, 40, 0.5, vocab_size=1000, seed=0)
    assert len(specs) == 200
    for s in specs:
        assert 50 <= len(s.prompt) <= 100 and s.prompt_len == len(s.prompt), s.prompt_len
        assert 20 <= s.output_len <= 40, s.output_len
        assert all(0 <= t < 1000 for t in s.prompt)
    assert len({s.prompt_len for s in specs}) > 10, "lengths should vary over the range"


def test_range_ratio_one_gives_exact_lengths():
    specs = random_requests(20, 32, 8, 1.0, vocab_size=100, seed=0)
    assert {(s.prompt_len, s.output_len) for s in specs} == {(32, 8)}


def test_range_ratio_zero_never_draws_an_empty_prompt():
    specs = random_requests(300, 3, 3, 0.0, vocab_size=100, seed=0)
    assert min(s.prompt_len for s in specs) == 1 and min(s.output_len for s in specs) == 1


def test_random_requests_are_reproducible_from_the_seed():
    a = random_requests(10, 16, 4, 0.0, vocab_size=100, seed=7)
    assert a == random_requests(10, 16, 4, 0.0, vocab_size=100, seed=7)
    assert a != random_requests(10, 16, 4, 0.0, vocab_size=100, seed=8)


def test_random_text_prompts_reencode_within_the_drawn_length():
    tok = CharTokenizer()
    specs = random_requests(20, 30, 4, 1.0, vocab_size=97, seed=0, tokenizer=tok)
    for s in specs:
        assert isinstance(s.prompt, str)
        assert s.prompt_len == len(tok.encode(s.prompt)) == 30, (s.prompt_len, s.prompt)


def write(tmp_path, data) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def conversation(prompt: str, reply: str, role_key: str = "from", text_key: str = "value"):
    turns = [{role_key: "human", text_key: prompt}, {role_key: "gpt", text_key: reply}]
    return {"conversations": turns}


def test_sharegpt_prompt_is_the_first_turn_and_output_len_the_replys_length(tmp_path):
    path = write(tmp_path, [conversation("what is two plus two", "it is four, my friend")])
    (spec,) = sharegpt_requests(path, 5, WordTokenizer(), seed=0)
    assert (spec.prompt, spec.prompt_len, spec.output_len) == ("what is two plus two", 5, 5)


def test_sharegpt_fixed_output_len_overrides_the_reply(tmp_path):
    path = write(tmp_path, [conversation("what is two plus two", "four")])
    (spec,) = sharegpt_requests(path, 5, WordTokenizer(), seed=0, fixed_output_len=9)
    assert spec.output_len == 9


def test_sharegpt_skips_short_pairs_and_one_turn_chats_and_stops_at_num(tmp_path):
    data = [conversation(f"question number {i}", "a fine answer") for i in range(6)]
    data += [conversation("hi", "a fine answer"), conversation("a long question", "ok")]
    data += [{"conversations": [{"from": "human", "value": "nobody answered this"}]}]
    specs = sharegpt_requests(write(tmp_path, data), 4, WordTokenizer(), seed=0)
    assert len(specs) == 4
    assert all(s.prompt.startswith("question number") for s in specs), specs


def test_sharegpt_accepts_role_and_content_keys(tmp_path):
    path = write(tmp_path, [conversation("say it twice", "it it", "role", "content")])
    (spec,) = sharegpt_requests(path, 1, WordTokenizer(), seed=0)
    assert spec.prompt == "say it twice"


def test_sharegpt_order_is_shuffled_by_the_seed(tmp_path):
    data = [conversation(f"question number {i}", "a fine answer") for i in range(30)]
    path = write(tmp_path, data)
    first = [s.prompt for s in sharegpt_requests(path, 30, WordTokenizer(), seed=1)]
    assert first == [s.prompt for s in sharegpt_requests(path, 30, WordTokenizer(), seed=1)]
    assert first != [s.prompt for s in sharegpt_requests(path, 30, WordTokenizer(), seed=2)]
    assert sorted(first) == sorted(f"question number {i}" for i in range(30))


MALFORMED = {
    "missing file": (None, "no such file"),
    "not JSON": ("{not json", "is not valid JSON"),
    "not a list": ({"conversations": []}, "is not ShareGPT format"),
    "entry without conversations": ([{"id": 1, "turns": []}], "entry 0 has no 'conversations'"),
    "turn without text": ([{"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}],
                          "entry 0 has a turn without a text 'value'"),
    "no two-turn chat": ([{"conversations": [{"from": "human", "value": "x"}]}],
                         "has no conversation with two turns"),
    "nothing within bounds": ([conversation("x", "y")], "no conversation has a prompt of"),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_sharegpt_file_is_a_dataset_path_error(tmp_path, case):
    data, message = MALFORMED[case]
    path = str(tmp_path / "absent.json") if data is None else write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        sharegpt_requests(path, 3, WordTokenizer(), seed=0)
    assert e.value.flag == "--dataset-path", e.value
    assert message in e.value.message, e.value.message


def test_synthetic_conversations_grow_a_shared_prefix_turn_by_turn():
    specs = synthetic_conversations(6, turns=3, input_len=10, output_len=5, range_ratio=0.5, seed=0)
    assert len(specs) == 6
    # two conversations, requests ordered turn by turn: c0t0, c1t0, c0t1, c1t1, c0t2, c1t2
    for conv in (0, 1):
        turns = [specs[conv + 2 * t].prompt for t in range(3)]
        assert turns[1].startswith(turns[0]) and turns[2].startswith(turns[1]), turns
        assert turns[2].count("User:") == 3, turns[2]
    assert not specs[1].prompt.startswith(specs[0].prompt), "conversations must differ"
    assert all(2 <= s.output_len <= 5 for s in specs), [s.output_len for s in specs]


def test_synthetic_conversations_stop_at_num_mid_turn_and_are_seeded():
    specs = synthetic_conversations(5, turns=4, input_len=8, output_len=4, range_ratio=1.0, seed=3)
    assert len(specs) == 5
    assert specs == synthetic_conversations(5, 4, 8, 4, 1.0, seed=3)
    first_messages = [s.prompt for s in specs[:2]]
    assert all(len(p.split()) == 8 + 2 for p in first_messages), "User: + 8 words + Assistant:"
