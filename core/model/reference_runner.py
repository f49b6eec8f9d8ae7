"""A minimal single-request runner over the paged KV cache, for tests and checks.

It drives a ``CausalLM`` exactly as the engine does (torch MHA or MLA attention
backend as the model's ``kv_cache_spec`` says, page table, cache slots, prefill
then one-token decode steps) but without any scheduling, so model numerics can
be compared against transformers and engine outputs against this. Pages are
handed out in a scrambled order so contiguity is never assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdcore.attention.base import AttentionConfig, AttentionMetadata
from pdcore.attention.torch_mla import TorchMLAAttention
from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.kvcache.pool import KVShape, allocate_layer_caches
from pdcore.model.base import CausalLM, ForwardContext


class _PagedSequence:
    """One request's KV cache: pages, their table row and per-step metadata."""

    def __init__(self, model: CausalLM, max_tokens: int, page_size: int):
        cfg = model.config
        param = next(model.parameters())
        self.device, self.dtype, self.page_size = param.device, param.dtype, page_size
        num_pages = -(-max_tokens // page_size)
        # Page 0 stays unused (the pool's padding page); the rest are used back to front.
        pages = torch.arange(num_pages, 0, -1, dtype=torch.int64)
        self.page_table = pages[None, :].to(self.device)
        self.pages = pages
        spec = cfg.kv_cache_spec()  # MHA: K and V per layer; MLA: one latent tensor
        shape = KVShape(
            cfg.num_hidden_layers,
            spec.num_kv_heads,
            spec.head_dim,
            page_size,
            self.dtype,
            latent_rank=spec.latent_rank,
        )
        # Zeros, not empty: masked slots still meet the values, and NaN * 0 is NaN.
        _, self.kv_caches = allocate_layer_caches(shape, num_pages + 1, self.device)
        backend = TorchMLAAttention if shape.is_mla else TorchNativeAttention
        self.attn = backend(
            AttentionConfig(
                cfg.num_attention_heads,
                spec.num_kv_heads,
                spec.head_dim,
                page_size,
                self.dtype,
                self.device,
                spec.softmax_scale,
            )
        )
        self.length = 0

    def step(self, model: CausalLM, token_ids: Sequence[int]) -> torch.Tensor:
        """Run ``token_ids`` after the cached prefix; return hidden ``[len, H]``."""
        start, end = self.length, self.length + len(token_ids)
        pos = torch.arange(start, end, dtype=torch.int64)
        slots = self.pages[pos // self.page_size] * self.page_size + pos % self.page_size
        meta = AttentionMetadata(
            is_decode=len(token_ids) == 1 and start > 0,
            page_table=self.page_table,
            seq_lens=torch.tensor([end], dtype=torch.int64, device=self.device),
            extend_lens=torch.tensor([end - start], dtype=torch.int64, device=self.device),
            cache_slots=slots.to(self.device),
            seq_lens_cpu=[end],
            extend_lens_cpu=[end - start],
        )
        self.attn.plan(meta)
        ctx = ForwardContext(attn=self.attn, kv_caches=self.kv_caches)
        ids = torch.tensor(list(token_ids), dtype=torch.int64, device=self.device)
        hidden = model(ids, pos.to(self.device), ctx)
        self.length = end
        return hidden


def _chunks(ids: Sequence[int], size: int | None):
    size = size or len(ids)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@torch.no_grad()
def prompt_logits(
    model: CausalLM,
    input_ids: Sequence[int],
    page_size: int = 4,
    prefill_chunk: int | None = None,
) -> torch.Tensor:
    """float32 logits ``[T, vocab]`` of every prompt position (one prefill pass, or
    chunks of ``prefill_chunk`` tokens that attend to the cached earlier chunks)."""
    ids = list(input_ids)
    seq = _PagedSequence(model, len(ids), page_size)
    hidden = torch.cat([seq.step(model, chunk) for chunk in _chunks(ids, prefill_chunk)])
    return model.compute_logits(hidden)


@torch.no_grad()
def greedy_generate(
    model: CausalLM,
    input_ids: Sequence[int],
    max_new_tokens: int,
    page_size: int = 4,
    *,
    prefill_chunk: int | None = None,
    eos_token_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy continuation of ``input_ids``: the new tokens only, ending at the first
    token of ``eos_token_ids`` (included) or after ``max_new_tokens``."""
    ids = list(input_ids)
    seq = _PagedSequence(model, len(ids) + max_new_tokens, page_size)
    for chunk in _chunks(ids, prefill_chunk):
        hidden = seq.step(model, chunk)
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(model.compute_logits(hidden[-1:]).argmax(-1))
        out.append(token)
        if token in eos_token_ids or len(out) == max_new_tokens:
            break
        hidden = seq.step(model, [token])
    return out
