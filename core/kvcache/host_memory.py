"""Zeroed host tensors backed by transparent huge pages.

KV pages on the CPU path are read and written by transfer engines that copy
between processes (NIXL/UCX's CMA, Mooncake's TCP). On Linux those copies walk
the page tables of both processes; with 4 KiB pages that walk is a large part of
the cost: on a 2-core machine NIXL moved the same 180 MiB at ~3 GB/s out of
torch's allocations and ~5 GB/s out of numpy's, which advises huge pages for
large arrays. Kernels with THP in ``madvise`` mode (the common default) only
back ranges that ask, so the KV pool asks: an anonymous mapping, 2 MiB aligned,
``MADV_HUGEPAGE``, then zeroed so every page is faulted in at startup rather
than during the first transfer into it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap

import torch

logger = logging.getLogger(__name__)
HUGE_PAGE = 2 << 20


def zeros(dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor of ``dims``; huge-page backed where the OS allows it.

    Falls back to ``torch.zeros`` for small tensors (under one huge page) and
    where ``madvise`` is unavailable; the memory is the same either way."""
    nbytes = math.prod(dims) * torch.empty((), dtype=dtype).element_size()
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(dims, dtype=dtype)
    # Private: a shared anonymous mapping is shmem, which THP leaves alone.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    offset = -addr % HUGE_PAGE
    span = (nbytes + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    try:
        region.madvise(mmap.MADV_HUGEPAGE, offset, min(span, len(region) - offset))
    except OSError as e:  # THP disabled ("never") or unsupported: small pages then
        logger.debug("no huge pages for a %d-byte KV buffer: %s", nbytes, e)
    flat = torch.frombuffer(region, dtype=torch.uint8, count=nbytes, offset=offset)
    out = flat.view(dtype).view(dims)
    out.zero_()  # fault every page in now, as torch.zeros would
    return out
