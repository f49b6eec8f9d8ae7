"""A CPU fake of the torch_npu operators pdcore's Ascend attention calls.

Same operator names and keyword names as torch_npu (as vllm-ascend and SGLang's
Ascend backend call them, and as the Ascend Extension for PyTorch and ATB
operator references document them). Each call is first checked the way the NPU
kernel constrains its inputs (shapes, dtypes, index dtypes, host/device
placement, block sizes, the compressed causal mask) and raises ``FakeOpError``
on misuse; it is then computed with torch (SDPA in the input dtype over the
gathered pages, as the core's torch backend does) and recorded in ``calls``.

Only what pdcore calls is modelled: ``_npu_reshape_and_cache``,
``_npu_paged_attention`` and ``npu_fused_infer_attention_score`` in the TND
layout over a block table (MHA/GQA, and MLA through ``query_rope``/``key_rope``).
Anything outside that subset raises instead of guessing what the NPU would do.
"""

from __future__ import annotations

import importlib.machinery
import types
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.int8)
ATTENTION_DTYPES = (torch.float16, torch.bfloat16)
MASK_SIZE = 2048  # FIA's compressed mask for sparse_mode 2/3/4 is 2048 x 2048
RIGHT_DOWN_CAUSAL = 3
NO_MASK = 0
PA_MAX_BLOCK_TIMES_HEAD = 128 * 128  # ATB PagedAttention: block_size * head_size <= 128 * 128
PA_MAX_HEAD_SIZE = 256
FIA_MAX_BLOCK_SIZE = 512
DEFAULT_TOKENS = 2147483647


class FakeOpError(RuntimeError):
    """An input the NPU operator would reject."""


@dataclass
class Call:
    """One operator call as made: its name and keyword arguments."""

    op: str
    args: dict


def _require(ok: bool, op: str, message: str) -> None:
    if not ok:
        raise FakeOpError(f"{op}: {message}")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_index(t, op: str, name: str, dims: int, host: bool = False) -> None:
    _require(isinstance(t, torch.Tensor), op, f"{name} must be a tensor, got {type(t).__name__}")
    _require(t.dtype == torch.int32, op, f"{name} must be int32, got {t.dtype}")
    _require(t.dim() == dims, op, f"{name} must have {dims} dimension(s), got {_shape(t)}")
    if host:
        _require(t.device.type == "cpu", op, f"{name} is read on the host, got {t.device}")


def _check_int_list(values, op: str, name: str, length: int) -> list[int]:
    """FIA's ``SymInt[]`` arguments: a host-side list of ints, one per request."""
    _require(
        isinstance(values, Sequence) and all(isinstance(v, int) for v in values),
        op,
        f"{name} must be a list of ints, got {type(values).__name__}",
    )
    _require(len(values) == length, op, f"{name} has {len(values)} entries for {length} requests")
    return list(values)


class FakeTorchNpu:
    """The fake operators; ``module()`` exposes them under torch_npu's names."""

    def __init__(self):
        self.calls: list[Call] = []
        self._verified_masks: dict[int, weakref.ref] = {}  # id -> the mask itself

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("torch_npu", __doc__)
        # Libraries probe ``importlib.util.find_spec("torch_npu")``; a module in
        # sys.modules without a spec makes that raise.
        mod.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
        mod._npu_reshape_and_cache = self._npu_reshape_and_cache
        mod._npu_paged_attention = self._npu_paged_attention
        mod.npu_fused_infer_attention_score = self.npu_fused_infer_attention_score
        mod.calls = self.calls
        mod.FakeOpError = FakeOpError
        mod.is_fake = True
        return mod

    # ---- KV write -------------------------------------------------------------

    def _npu_reshape_and_cache(self, key, value, key_cache, value_cache, slot_indices):
        op = "_npu_reshape_and_cache"
        self.calls.append(
            Call(
                op,
                dict(
                    key=key,
                    value=value,
                    key_cache=key_cache,
                    value_cache=value_cache,
                    slot_indices=slot_indices,
                ),
            )
        )
        for name, new, cache in (("key", key, key_cache), ("value", value, value_cache)):
            _require(
                new.dim() == 3, op, f"{name} must be [tokens, heads, head_size], got {_shape(new)}"
            )
            _require(
                cache.dim() == 4,
                op,
                f"{name}_cache must be [blocks, block_size, heads, head_size], got {_shape(cache)}",
            )
            _require(
                _shape(cache)[2:] == _shape(new)[1:],
                op,
                f"{name} {_shape(new)} does not fit {name}_cache {_shape(cache)}",
            )
            _require(
                new.dtype == cache.dtype and new.dtype in CACHE_DTYPES,
                op,
                f"{name} {new.dtype} / {name}_cache {cache.dtype}: need one of float16, "
                "bfloat16, int8",
            )
            _require(cache.is_contiguous(), op, f"{name}_cache must be contiguous")
            _require(new.device == cache.device, op, f"{name} and {name}_cache on two devices")
        _require(
            _shape(key_cache)[:2] == _shape(value_cache)[:2],
            op,
            "key_cache and value_cache differ in blocks or block_size",
        )
        _check_index(slot_indices, op, "slot_indices", 1)
        tokens = key.shape[0]
        _require(
            value.shape[0] == tokens and slot_indices.shape[0] == tokens,
            op,
            f"{tokens} keys, {value.shape[0]} values, {slot_indices.shape[0]} slots",
        )
        capacity = key_cache.shape[0] * key_cache.shape[1]
        slots = slot_indices.long()
        if tokens:
            lo, hi = int(slots.min()), int(slots.max())
            _require(lo >= 0 and hi < capacity, op, f"slot {lo}..{hi} outside 0..{capacity - 1}")
        key_cache.view(capacity, *key_cache.shape[2:])[slots] = key
        value_cache.view(capacity, *value_cache.shape[2:])[slots] = value

    # ---- decode: paged attention ------------------------------------------------

    def _npu_paged_attention(
        self,
        query,
        key_cache,
        value_cache,
        num_kv_heads,
        num_heads,
        scale_value,
        block_table,
        context_lens,
        out,
    ):
        op = "_npu_paged_attention"
        self.calls.append(
            Call(
                op,
                dict(
                    query=query,
                    key_cache=key_cache,
                    value_cache=value_cache,
                    num_kv_heads=num_kv_heads,
                    num_heads=num_heads,
                    scale_value=scale_value,
                    block_table=block_table,
                    context_lens=context_lens,
                    out=out,
                ),
            )
        )
        _require(
            query.dim() == 3, op, f"query must be [tokens, heads, head_size], got {_shape(query)}"
        )
        tokens, heads, dim = query.shape
        _require(heads == num_heads, op, f"query has {heads} heads, num_heads={num_heads}")
        _require(
            num_kv_heads > 0 and num_heads % num_kv_heads == 0,
            op,
            f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}",
        )
        _require(
            key_cache.dim() == 4 and _shape(value_cache) == _shape(key_cache),
            op,
            f"caches must be [blocks, block_size, kv_heads, head_size], got "
            f"{_shape(key_cache)} and {_shape(value_cache)}",
        )
        blocks, block_size, kv_heads, kdim = key_cache.shape
        _require(
            kv_heads == num_kv_heads and kdim == dim,
            op,
            f"cache heads x dim {kv_heads} x {kdim}, expected {num_kv_heads} x {dim}",
        )
        _require(
            query.dtype in ATTENTION_DTYPES,
            op,
            f"query dtype {query.dtype}: need float16 or bfloat16",
        )
        _require(
            key_cache.dtype == value_cache.dtype == query.dtype,
            op,
            f"dtypes differ: query {query.dtype}, caches {key_cache.dtype}",
        )
        _require(
            query.is_contiguous() and key_cache.is_contiguous() and value_cache.is_contiguous(),
            op,
            "query and caches must be contiguous",
        )
        _require(block_size % 16 == 0, op, f"block_size {block_size} is not a multiple of 16")
        _require(0 < dim <= PA_MAX_HEAD_SIZE, op, f"head_size {dim} outside 1..256")
        _require(
            block_size * dim <= PA_MAX_BLOCK_TIMES_HEAD,
            op,
            f"block_size * head_size = {block_size * dim} > 128 * 128",
        )
        _check_index(block_table, op, "block_table", 2)
        _check_index(context_lens, op, "context_lens", 1, host=True)
        _require(
            block_table.shape[0] == tokens and context_lens.shape[0] == tokens,
            op,
            f"{tokens} queries, {block_table.shape[0]} block-table rows, "
            f"{context_lens.shape[0]} context lengths",
        )
        _require(
            int(block_table.min()) >= 0 and int(block_table.max()) < blocks,
            op,
            f"block ids must lie in 0..{blocks - 1}",
        )
        lens = context_lens.tolist()
        longest = block_table.shape[1] * block_size
        _require(
            all(0 < n <= longest for n in lens),
            op,
            f"context_lens {lens} outside 1..{longest} (the block table's reach)",
        )
        _require(
            _shape(out) == _shape(query) and out.dtype == query.dtype,
            op,
            f"out {_shape(out)} {out.dtype}, expected {_shape(query)} {query.dtype}",
        )
        for t, length in enumerate(lens):
            keys = _gather(key_cache, block_table[t], length)
            values = _gather(value_cache, block_table[t], length)
            res = F.scaled_dot_product_attention(
                query[t].unsqueeze(1),  # [heads, 1, dim]
                keys.transpose(0, 1),
                values.transpose(0, 1),
                scale=scale_value,
                enable_gqa=heads != kv_heads,
            )
            out[t].copy_(res.squeeze(1))

    # ---- prefill / extend: fused infer attention ---------------------------------

    def npu_fused_infer_attention_score(
        self,
        query,
        key,
        value,
        *,
        atten_mask=None,
        actual_seq_lengths=None,
        actual_seq_lengths_kv=None,
        block_table=None,
        query_rope=None,
        key_rope=None,
        num_heads=1,
        scale=1.0,
        pre_tokens=DEFAULT_TOKENS,
        next_tokens=DEFAULT_TOKENS,
        input_layout="BSH",
        num_key_value_heads=0,
        sparse_mode=0,
        inner_precise=0,
        block_size=0,
        antiquant_mode=0,
        antiquant_scale=None,
        softmax_lse_flag=False,
        **others,
    ):
        op = "npu_fused_infer_attention_score"
        args = dict(
            query=query,
            key=key,
            value=value,
            atten_mask=atten_mask,
            actual_seq_lengths=actual_seq_lengths,
            actual_seq_lengths_kv=actual_seq_lengths_kv,
            block_table=block_table,
            query_rope=query_rope,
            key_rope=key_rope,
            num_heads=num_heads,
            scale=scale,
            input_layout=input_layout,
            num_key_value_heads=num_key_value_heads,
            sparse_mode=sparse_mode,
            block_size=block_size,
            **others,
        )
        self.calls.append(Call(op, args))
        used = sorted(k for k, v in others.items() if v is not None)
        _require(not used, op, f"the fake does not model {used}")
        _require(
            input_layout == "TND" and block_table is not None,
            op,
            f"the fake models the TND layout over a block table, got {input_layout!r} "
            f"{'with' if block_table is not None else 'without'} block_table",
        )
        _require(
            not softmax_lse_flag and antiquant_mode == 0 and antiquant_scale is None,
            op,
            "the fake models no softmax_lse output and no antiquant",
        )
        _require(
            query.dim() == 3, op, f"TND query must be [tokens, heads, dim], got {_shape(query)}"
        )
        tokens, heads, dim = query.shape
        _require(heads == num_heads, op, f"query has {heads} heads, num_heads={num_heads}")
        kv_heads = num_key_value_heads or num_heads
        _require(
            num_heads % kv_heads == 0,
            op,
            f"num_heads {num_heads} is not a multiple of num_key_value_heads {kv_heads}",
        )
        _require(
            query.dtype in ATTENTION_DTYPES,
            op,
            f"query dtype {query.dtype}: need float16 or bfloat16",
        )
        _require(query.is_contiguous(), op, "query must be contiguous")
        keys = _paged_view(key, kv_heads, block_size, op, "key")
        values = _paged_view(value, kv_heads, block_size, op, "value")
        _require(keys.shape[3] == dim, op, f"key head dim {keys.shape[3]} != query dim {dim}")
        _require(keys.shape[:3] == values.shape[:3], op, "key and value pages differ")
        _require(
            key.dtype == value.dtype == query.dtype,
            op,
            f"dtypes differ: query {query.dtype}, key {key.dtype}, value {value.dtype}",
        )
        if query_rope is not None or key_rope is not None:
            _require(
                query_rope is not None and key_rope is not None,
                op,
                "query_rope and key_rope come together",
            )
            _require(
                query_rope.dim() == 3 and _shape(query_rope)[:2] == (tokens, heads),
                op,
                f"query_rope {_shape(query_rope)} does not match query {_shape(query)}",
            )
            _require(
                query_rope.dtype == query.dtype and key_rope.dtype == query.dtype,
                op,
                "rope inputs must have the query's dtype",
            )
            rope = _paged_view(key_rope, kv_heads, block_size, op, "key_rope")
            _require(
                rope.shape[:3] == keys.shape[:3] and rope.shape[3] == query_rope.shape[2],
                op,
                f"key_rope {_shape(key_rope)} does not match key {_shape(key)}",
            )
        blocks = keys.shape[0]
        _check_index(block_table, op, "block_table", 2)
        _require(
            int(block_table.min()) >= 0 and int(block_table.max()) < blocks,
            op,
            f"block ids must lie in 0..{blocks - 1}",
        )
        batch = block_table.shape[0]
        ends = _check_int_list(actual_seq_lengths, op, "actual_seq_lengths", batch)
        kv_lens = _check_int_list(actual_seq_lengths_kv, op, "actual_seq_lengths_kv", batch)
        starts = [0, *ends[:-1]]
        _require(
            all(s <= e for s, e in zip(starts, ends, strict=True)) and ends[-1] == tokens,
            op,
            f"TND actual_seq_lengths must be cumulative ending at {tokens}, got {ends}",
        )
        reach = block_table.shape[1] * block_size
        _require(
            all(0 < n <= reach for n in kv_lens),
            op,
            f"actual_seq_lengths_kv {kv_lens} outside 1..{reach}",
        )
        self._check_mask(op, sparse_mode, atten_mask, starts, ends, kv_lens)
        out = query.new_empty(tokens, heads, values.shape[3])
        for b, (start, end, length) in enumerate(zip(starts, ends, kv_lens, strict=True)):
            if start == end:
                continue
            q = query[start:end]
            k = _gather(keys, block_table[b], length)
            v = _gather(values, block_table[b], length)
            if query_rope is not None:
                q = torch.cat([q, query_rope[start:end]], dim=-1)
                k = torch.cat([k, _gather(rope, block_table[b], length)], dim=-1)
            mask = None
            if sparse_mode == RIGHT_DOWN_CAUSAL:
                q_pos = torch.arange(length - (end - start), length, device=query.device)
                mask = torch.arange(length, device=query.device)[None, :] <= q_pos[:, None]
            res = F.scaled_dot_product_attention(
                q.transpose(0, 1),
                k.transpose(0, 1),
                v.transpose(0, 1),
                attn_mask=mask,
                scale=scale,
                enable_gqa=heads != kv_heads,
            )
            out[start:end] = res.transpose(0, 1)
        return out, query.new_empty(1)  # softmax_lse: a placeholder unless softmax_lse_flag

    def _check_mask(self, op, sparse_mode, atten_mask, starts, ends, kv_lens) -> None:
        _require(
            sparse_mode in (NO_MASK, RIGHT_DOWN_CAUSAL),
            op,
            f"the fake models sparse_mode 0 and 3, got {sparse_mode}",
        )
        if sparse_mode == NO_MASK:
            _require(atten_mask is None, op, "sparse_mode 0 with a mask is not modelled")
            return
        _require(
            isinstance(atten_mask, torch.Tensor)
            and atten_mask.dtype == torch.bool
            and _shape(atten_mask) == (MASK_SIZE, MASK_SIZE),
            op,
            "sparse_mode 3 needs the compressed bool mask [2048, 2048]",
        )
        known = self._verified_masks.get(id(atten_mask))
        if known is None or known() is not atten_mask:  # checked once per mask tensor
            upper = torch.ones(MASK_SIZE, MASK_SIZE, dtype=torch.bool).triu(1)
            _require(
                torch.equal(atten_mask.cpu(), upper),
                op,
                "sparse_mode 3 needs the upper-triangular mask (True above the diagonal)",
            )
            self._verified_masks[id(atten_mask)] = weakref.ref(atten_mask)
        _require(
            all(e - s <= n for s, e, n in zip(starts, ends, kv_lens, strict=True)),
            op,
            "right-down causal needs at least as many keys as queries per request",
        )


def _paged_view(t, kv_heads: int, block_size: int, op: str, name: str) -> torch.Tensor:
    """A paged key/value/rope input as ``[blocks, block_size, kv_heads, dim]``.

    FIA takes the cache either as ``[blocks, block_size, kv_heads * dim]`` or as
    ``[blocks, kv_heads, block_size, dim]``.
    """
    _require(
        isinstance(t, torch.Tensor) and t.dim() in (3, 4),
        op,
        f"paged {name} must be 3-D or 4-D, got {getattr(t, 'shape', t)}",
    )
    _require(t.is_contiguous(), op, f"{name} must be contiguous")
    if t.dim() == 3:
        blocks, size, hidden = t.shape
        _require(
            hidden % kv_heads == 0,
            op,
            f"{name} hidden {hidden} not divisible by {kv_heads} kv heads",
        )
        paged = t.view(blocks, size, kv_heads, hidden // kv_heads)
    else:
        _require(t.shape[1] == kv_heads, op, f"{name} {_shape(t)} has not {kv_heads} kv heads")
        paged = t.permute(0, 2, 1, 3)
    size = paged.shape[1]
    _require(size == block_size, op, f"{name} block size {size} != block_size {block_size}")
    _require(
        size % 16 == 0 and size <= FIA_MAX_BLOCK_SIZE,
        op,
        f"block_size {size} must be a multiple of 16 up to 512",
    )
    return paged


def _gather(cache: torch.Tensor, pages: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` rows ``[length, heads, dim]`` of one request's pages."""
    size = cache.shape[1]
    used = pages[: -(-length // size)].long()
    return cache[used].reshape(-1, *cache.shape[2:])[:length]


def make_module() -> types.ModuleType:
    """A fresh ``torch_npu`` stand-in with an empty call record."""
    return FakeTorchNpu().module()
