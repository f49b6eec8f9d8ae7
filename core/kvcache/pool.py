"""``KVPool``: the paged K/V tensors of every layer, sized once at startup.

Layout is the attention seam's "NHD": per layer a K and a V tensor of shape
``[num_pages, page_size, num_kv_heads, head_dim]``. MLA models (DeepSeek) keep
one latent tensor per layer instead, ``[num_pages, page_size, 1, R + P]``: the
compressed KV (rank R) then the rotary key (P dims) of each token. Attention
still gets a pair per layer, the two column ranges of that one tensor, so the
seam is the same as for MHA; transfers move the one tensor. Page 0 is the padding page:
page-table rows point at it past a request's last page, so it is zeroed and
never allocated (garbage there could be NaN, and NaN times a zero attention
weight is still NaN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pdcore.kvcache import host_memory
from pdcore.kvcache.allocator import PageAllocator

logger = logging.getLogger(__name__)

PADDING_PAGES = 1
# Fraction of free memory (after weights) for KV when --mem-fraction-static is unset.
# The host is shared with everything else, so the CPU default is modest.
DEFAULT_MEM_FRACTION = {"cpu": 0.1}
DEFAULT_MEM_FRACTION_ACCEL = 0.85


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype
    latent_rank: int = 0  # MLA: R of the one latent tensor per layer; 0 = K and V tensors

    @property
    def is_mla(self) -> bool:
        return self.latent_rank > 0

    @property
    def buffers_per_layer(self) -> int:
        return 1 if self.is_mla else 2

    @property
    def bytes_per_page(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        per_layer = self.page_size * self.num_kv_heads * self.head_dim * elem
        return self.buffers_per_layer * self.num_layers * per_layer


def allocate_layer_caches(
    shape: KVShape, num_pages: int, device: torch.device
) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """``(buffers, layer_caches)``: the zeroed tensors, and the pair each layer's
    attention gets (MHA: its K and V tensors; MLA: latent and rope-key columns of
    its one tensor, views that write through to it)."""
    dims = (num_pages, shape.page_size, shape.num_kv_heads, shape.head_dim)
    count = shape.buffers_per_layer * shape.num_layers
    if torch.device(device).type == "cpu":  # transfer engines copy host pages: huge pages
        buffers = [host_memory.zeros(dims, shape.dtype) for _ in range(count)]
    else:
        buffers = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(count)]
    if shape.is_mla:
        rank = shape.latent_rank
        if not 0 < rank < shape.head_dim or shape.num_kv_heads != 1:
            raise ValueError(f"MLA cache needs 1 head and 0 < latent rank < head_dim: {shape}")
        pairs = [(b[..., :rank], b[..., rank:]) for b in buffers]
    else:
        pairs = list(zip(buffers[0::2], buffers[1::2], strict=True))
    return buffers, pairs


def pages_for_budget(
    shape: KVShape,
    *,
    max_total_tokens: int | None,
    mem_fraction_static: float | None,
    free_bytes: int | None,
    device_type: str = "cpu",
) -> int:
    """Usable pages (padding page excluded): from a token budget, else from memory.

    ``max_total_tokens`` wins when set (rounded up to whole pages); otherwise
    ``mem_fraction_static`` of ``free_bytes`` (free memory after the weights are
    loaded) divided by the bytes one page takes over all layers.
    """
    if max_total_tokens is not None:
        return -(-max_total_tokens // shape.page_size)
    if free_bytes is None:
        raise ValueError("free_bytes is needed when max_total_tokens is not set")
    if mem_fraction_static is None:
        mem_fraction_static = DEFAULT_MEM_FRACTION.get(device_type, DEFAULT_MEM_FRACTION_ACCEL)
    pages = int(free_bytes * mem_fraction_static) // shape.bytes_per_page - PADDING_PAGES
    if pages < 1:
        raise MemoryError(
            f"no memory left for the KV cache: {free_bytes} bytes free x "
            f"{mem_fraction_static} is less than two pages of {shape.bytes_per_page} bytes; "
            "lower the model size or raise --mem-fraction-static / set --max-total-tokens"
        )
    return pages


class KVPool:
    """K/V tensors of all layers plus the allocator over their page ids."""

    def __init__(self, shape: KVShape, num_usable_pages: int, device: torch.device | str = "cpu"):
        self.shape = shape
        self.page_size = shape.page_size
        self.num_pages = num_usable_pages + PADDING_PAGES
        self.device = torch.device(device)
        self._buffers, self.layer_caches = allocate_layer_caches(shape, self.num_pages, self.device)
        self.allocator = PageAllocator(self.num_pages, reserved=PADDING_PAGES)
        logger.info(
            "KV pool: %d pages x %d tokens (%d tokens), %.1f MiB on %s",
            num_usable_pages,
            shape.page_size,
            self.max_total_tokens,
            self.num_pages * shape.bytes_per_page / 2**20,
            self.device,
        )

    @property
    def num_usable_pages(self) -> int:
        return self.num_pages - PADDING_PAGES

    @property
    def max_total_tokens(self) -> int:
        return self.num_usable_pages * self.page_size

    def tensors(self) -> list[torch.Tensor]:
        """Every K/V (or MLA latent) tensor, in ``buffers()`` order."""
        return list(self._buffers)

    def buffers(self) -> list[tuple[int, int]]:
        """``(data_ptr, nbytes)`` of every tensor, layer by layer: K then V, or the
        one latent tensor of an MLA layer.

        Transfer engines register these regions once; a page's bytes inside a
        tensor start at ``page_id * nbytes // num_pages``.
        """
        return [(t.data_ptr(), t.numel() * t.element_size()) for t in self._buffers]
