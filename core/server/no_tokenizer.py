"""The tokenizer of a ``--skip-tokenizer-init`` server: ids in, ids out, no text.

SGLang's flag: the server loads no tokenizer (the model folder may have none),
takes token ids and returns token ids. Every use of text is a 400 that names
the flag, so a client learns at once what to send instead.
"""

from __future__ import annotations

from pdcore.server.errors import RequestError

FLAG = "--skip-tokenizer-init"


def needs_tokenizer(what: str) -> RequestError:
    """The 400 for ``what`` (a feature that needs text) on a server without a tokenizer."""
    return RequestError(
        f"{what} needs a tokenizer, but this server runs with {FLAG}: "
        "send token ids ('input_ids' to /generate) and read 'output_ids'"
    )


class NoTokenizer:
    """Stands in for ``pdcore.model.tokenizer.Tokenizer``; knows the vocabulary size only."""

    def __init__(self, vocab_size: int, eos_token_ids=()):
        self.vocab_size = int(vocab_size)
        self.eos_token_ids = sorted(set(eos_token_ids))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise needs_tokenizer("a text prompt")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        raise needs_tokenizer("turning token ids into text")

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        raise needs_tokenizer("a chat request (its template)")

    def detokenizer(self, prompt_ids=(), skip_special_tokens: bool = True) -> _NoText:
        return _NoText()


class _NoText:
    """A request's detokenizer that produces no text (output stays ids)."""

    def step(self, ids) -> str:
        return ""

    def flush(self) -> str:
        return ""
