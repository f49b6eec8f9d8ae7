"""Text <-> token ids over a HF fast tokenizer, plus streaming detokenization.

Loading never touches the hub (``local_files_only=True``) and never runs code
from the model folder (``trust_remote_code=False``); GGUF files carry
their tokenizer and chat template in metadata, which transformers converts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from pdcore.errors import PdcoreError

REPLACEMENT_CHAR = "\ufffd"


class ChatTemplateError(PdcoreError):
    """The model has no chat template (use plain completions instead)."""


class Tokenizer:
    """What the serving front end needs from a tokenizer.

    ``eos_token_ids``: the union of the model config's ids (config.json,
    generation_config.json, GGUF metadata) and the tokenizer's own eos token.
    """

    def __init__(self, hf_tokenizer, eos_token_ids: Iterable[int] = ()):
        self.hf = hf_tokenizer
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: list[int] = sorted(ids)

    @classmethod
    def from_pretrained(cls, path: str, eos_token_ids: Iterable[int] = ()) -> Tokenizer:
        """From a HF model folder or a ``.gguf`` file (local files only)."""
        from transformers import AutoTokenizer

        # Never code from the model folder, and say so: left unset, transformers asks
        # on a terminal whether to run a folder's custom tokenizer code.
        local = {"local_files_only": True, "trust_remote_code": False}
        if path.endswith(".gguf"):
            folder, name = os.path.split(os.path.abspath(path))
            hf = AutoTokenizer.from_pretrained(folder, gguf_file=name, **local)
        else:
            hf = AutoTokenizer.from_pretrained(path, **local)
        return cls(hf, eos_token_ids)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (added tokens included)."""
        return len(self.hf)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Use ``add_special_tokens=False`` for a rendered chat
        prompt: templates already contain the BOS token where the model wants one."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs
    ) -> str:
        """Render ``messages`` with the model's template; ``template_kwargs`` reach the
        template as variables (e.g. ``tools``, ``enable_thinking``)."""
        if not self.has_chat_template:
            raise ChatTemplateError(
                "This model has no chat template; use the completions API with a plain prompt"
            )
        return self.hf.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )

    def detokenizer(
        self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True
    ) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids, skip_special_tokens)


class IncrementalDetokenizer:
    """Per-request streaming decode that never emits half a character.

    The prefix/read-offset technique of vLLM and SGLang: decode a short window
    ending at the last emitted token and the same window extended by the new
    tokens; the difference is the new text. Text ending in U+FFFD is an
    incomplete UTF-8 sequence (e.g. an emoji split over byte tokens) and is held
    back until later tokens complete it. Decoding a window instead of a single
    token keeps tokenizer-dependent spacing right. ``prompt_ids`` (their last few
    tokens) give the first output token that context, as in a full decode.
    """

    CONTEXT_TOKENS = 5

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids = list(prompt_ids[-self.CONTEXT_TOKENS :]) if prompt_ids else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def step(self, new_token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the text they complete (possibly "")."""
        self._ids.extend(new_token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""
        # Keep only the window the next step needs.
        self._ids = self._ids[self._read_offset :]
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """At the end of a request: text still held back (a dangling partial character
        decodes to U+FFFD, which is then the honest output)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        self._ids = self._ids[len(self._ids) :]
        self._prefix_offset = self._read_offset = 0
        return full_text[len(prefix_text) :]
