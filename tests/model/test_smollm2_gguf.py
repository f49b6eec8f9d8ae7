"""The embedded SmolLM2-135M-Instruct GGUF (Q4_1/Q8_0) against transformers loading the
same file, plus its tokenizer, chat template and streaming detokenization."""

from __future__ import annotations

import os

import pytest
import torch
from model.model_helpers import hf_greedy, hf_logits

from pdcore.model.embedded import embedded_model_path
from pdcore.model.loader import load_model
from pdcore.model.reference_runner import greedy_generate, prompt_logits
from pdcore.model.tokenizer import ChatTemplateError, Tokenizer

pytestmark = pytest.mark.slow

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Say 'good morning' in Japanese 🌅",
]
TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nnew lines  ",
    "Emoji: 🌅👩‍👩‍👧 and flags 🇫🇷 mid-sentence.",
    "日本語のテキストと中文混合。",
    "naïve café — “quotes” and ‰ signs",
]


@pytest.fixture(scope="module")
def smol():
    """The embedded model is part of the setup: its absence is a failure, not a skip."""
    embedded_model_path()
    return load_model(None, torch.float32, "cpu")


@pytest.fixture(scope="module")
def hf_smol(smol):
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(smol.path)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        attn_implementation="eager",
        local_files_only=True,
    )
    return model.eval()


@pytest.fixture(scope="module")
def chat_ids(smol):
    tok = smol.tokenizer
    return [
        tok.encode(
            tok.apply_chat_template([{"role": "user", "content": c}]), add_special_tokens=False
        )
        for c in CHATS
    ]


@pytest.fixture(scope="module")
def generations(smol, chat_ids):
    return [greedy_generate(smol.model, ids, 16) for ids in chat_ids]


def test_config_from_gguf_metadata(smol):
    cfg = smol.config
    assert cfg.architecture == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.tie_word_embeddings and smol.model.lm_head is None
    assert cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
    assert cfg.eos_token_ids == [2] and cfg.max_position_embeddings == 8192


def test_prompt_logits_close_to_transformers(smol, hf_smol, chat_ids):
    ids = chat_ids[0]
    got, want = prompt_logits(smol.model, ids), hf_logits(hf_smol, ids)
    diff = (got - want).abs().max().item()
    assert diff < 1e-3, f"max abs logit diff {diff:.2e} (logits up to {want.abs().max():.1f})"
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_greedy_matches_transformers(hf_smol, chat_ids, generations):
    for ids, ours in zip(chat_ids, generations, strict=True):
        assert ours == hf_greedy(hf_smol, ids, 16)


def test_greedy_answers_are_sensible(smol, generations):
    assert "Paris" in smol.tokenizer.decode(generations[0])


def test_tokenizer_round_trips(smol):
    tok = smol.tokenizer
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.vocab_size == 49152
    assert 2 in tok.eos_token_ids  # <|im_end|>
    assert tok.decode([1, 2], skip_special_tokens=False) == "<|im_start|><|im_end|>"
    assert tok.decode([1, 2]) == ""


def test_chat_template_renders(smol):
    tok = smol.tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    prompt = tok.apply_chat_template(messages)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "assistant\n"
    )


def _stream(detok, ids, step=1):
    pieces = [detok.step(ids[i : i + step]) for i in range(0, len(ids), step)]
    return "".join(pieces) + detok.flush(), pieces


@pytest.mark.parametrize("step", [1, 3])
def test_incremental_detokenizer_equals_full_decode(smol, generations, step):
    tok = smol.tokenizer
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        streamed, pieces = _stream(tok.detokenizer(), ids, step)
        assert streamed == text
        assert not any("\ufffd" in p for p in pieces), pieces  # no split characters
    for ids in generations:  # may end inside a character: flush() then gives U+FFFD
        assert _stream(tok.detokenizer(), ids, step)[0] == tok.decode(ids)


def test_incremental_detokenizer_holds_back_partial_characters(smol):
    tok = smol.tokenizer
    ids = tok.encode("🌅", add_special_tokens=False)
    assert len(ids) > 1  # one emoji, several byte tokens
    detok = tok.detokenizer()
    assert [detok.step([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.step(ids[-1:]) == "🌅"


def test_incremental_detokenizer_with_prompt_context(smol):
    tok = smol.tokenizer
    prompt = tok.encode("The sunrise 🌅 in 東京 is", add_special_tokens=False)
    out = tok.encode(" lovely 🌅 美しい.", add_special_tokens=False)
    expected = tok.decode(prompt + out)[len(tok.decode(prompt)) :]
    assert _stream(tok.detokenizer(prompt), out)[0] == expected


def test_hf_folder_tokenizer_and_missing_template(smol, tmp_path):
    smol.tokenizer.hf.save_pretrained(tmp_path)
    tok = Tokenizer.from_pretrained(str(tmp_path), eos_token_ids=[7])
    assert tok.eos_token_ids == [2, 7]
    for text in TEXTS:
        assert tok.encode(text) == smol.tokenizer.encode(text)
    messages = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(messages) == smol.tokenizer.apply_chat_template(messages)
    tok.hf.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template(messages)
