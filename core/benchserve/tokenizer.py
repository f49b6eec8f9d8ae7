"""Which tokenizer the client uses: ``--tokenizer``, else the one the server names.

Needed only where the client must count or make text tokens (ShareGPT lengths,
random text prompts for the OpenAI API); loading is local-only, like the server's.
"""

from __future__ import annotations

import os

from pdcore.errors import ConfigError

# What a pdcore server without --model-path reports: its embedded SmolLM2 GGUF.
EMBEDDED = "default"


class TextTokenizer:
    """encode/decode as the dataset generators use them (special tokens as the server
    adds them on encode; none in decoded text)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(given: str | None, server: dict) -> TextTokenizer:
    """``given`` (a path or a cached HF name) or the server's ``tokenizer_path`` if that
    path exists on this machine; a ``--tokenizer`` error otherwise."""
    from pdcore.model.tokenizer import Tokenizer

    path = given or server.get("tokenizer_path") or server.get("model_path")
    if not given and path == EMBEDDED:
        path = _embedded_path() or path
    if not given and not (path and os.path.exists(path)):
        if path:
            where = f"the server's tokenizer ({path}) is not on this machine"
        else:
            where = "the server does not name its tokenizer"
        raise ConfigError("--tokenizer", f"{where}; pass --tokenizer PATH_OR_NAME")
    try:
        return TextTokenizer(Tokenizer.from_pretrained(path))
    except Exception as e:  # transformers raises OSError, ValueError, ...
        raise ConfigError("--tokenizer", f"cannot load {path!r}: {e}") from None


def _embedded_path() -> str | None:
    """The embedded model's file, if its package is installed here too."""
    from pdcore.model.embedded import embedded_model_path

    try:
        return embedded_model_path()
    except FileNotFoundError:
        return None
