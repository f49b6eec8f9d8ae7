"""Hostile text and token ids through the real tokenizer path (SmolLM2's, embedded).

The server fuzz tests use a byte tokenizer; a production server tokenizes with
Hugging Face's and renders chat prompts with a Jinja template. Spec: for any
prompt text and any chat messages (odd Unicode, lone surrogates, template-like
text) ``TokenizerManager`` returns in-vocabulary ids or raises a 400
``RequestError``; the incremental detokenizer turns any ids a client or model
can produce into valid Unicode without raising, and without a prompt it adds
up to exactly what a full decode gives.
"""

from __future__ import annotations

import pytest
from fuzz.profile import HTTP_EXAMPLES, fuzz_settings
from fuzz.strategies import any_text, has_surrogate
from hypothesis import given
from hypothesis import strategies as st

from pdcore.server.errors import RequestError
from pdcore.server.openai_inputs import ROLES
from pdcore.server.tokenizer_manager import TokenizerManager

TEMPLATE_LIKE = st.sampled_from(
    ["{{ messages }}", "{% raw %}", "<|im_start|>", "<|im_end|>", "</s>"]
)
texts = st.one_of(any_text, TEMPLATE_LIKE, st.text(max_size=40))


@pytest.fixture(scope="module")
def tm():
    from pdcore.model.embedded import embedded_model_path
    from pdcore.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(embedded_model_path())
    # Nothing is bound until start(): the addresses are never used.
    return TokenizerManager(
        tokenizer, "ipc:///nowhere/in", "ipc:///nowhere/out", context_length=8192
    )


def in_vocab(tm, ids) -> bool:
    return all(0 <= t < tm.vocab_size for t in ids)


@fuzz_settings(HTTP_EXAMPLES)
@given(text=texts)
def test_any_prompt_text_encodes_or_is_a_400(tm, cases, text):
    cases()
    try:
        ids = tm.encode(text)
    except RequestError as e:  # empty, a lone surrogate, or nothing left ("\x1d")
        assert e.status == 400 and e.message
    else:
        assert ids and in_vocab(tm, ids) and text and not has_surrogate(text)


@fuzz_settings(HTTP_EXAMPLES)
@given(
    messages=st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts}),
        min_size=1,
        max_size=4,
    )
)
def test_any_chat_renders_or_is_a_400(tm, cases, messages):
    cases()
    try:
        ids = tm.chat_ids(messages)
    except RequestError as e:
        assert e.status == 400 and e.message
    else:
        assert ids and in_vocab(tm, ids)


@fuzz_settings(HTTP_EXAMPLES)
@given(
    data=st.data(),
    chunk=st.integers(1, 4),
    skip_special=st.booleans(),
)
def test_the_detokenizer_takes_any_ids(tm, cases, data, chunk, skip_special):
    """Byte-level pieces (low ids) make broken UTF-8 likely; specials and the top
    of the vocabulary are in the mix."""
    cases()
    ids = st.lists(st.one_of(st.integers(0, 300), st.integers(0, tm.vocab_size - 1)), max_size=24)
    prompt, out = data.draw(ids), data.draw(ids)
    detok = tm.tokenizer.detokenizer(prompt, skip_special)
    text = "".join(detok.step(out[i : i + chunk]) for i in range(0, len(out), chunk))
    text += detok.flush()
    text.encode("utf-8")  # valid Unicode: no lone surrogates
    if not prompt:
        assert text == tm.tokenizer.decode(out, skip_special_tokens=skip_special)
