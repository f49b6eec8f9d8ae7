"""Attention-backend seam: the registration object and the kernel interface.

The model runner builds one ``AttentionMetadata`` per forward pass and calls
``plan`` once; every layer then calls ``forward``, which stores the new K/V into
the paged cache and attends over the cached prefix plus the new tokens. Backends
that precompute work per batch (FlashInfer's plan/run) do it in ``plan``.

KV cache layout ("NHD", the pool's native layout): per layer a K and a V tensor
of shape ``[num_pages, page_size, num_kv_heads, head_dim]``; token ``t`` of a
request lives at ``page_table[t // page_size]``, offset ``t % page_size``.
MLA backends (``KVLayout.kind == "mla"``) take the same arguments with other
meanings: absorbed queries, the latent and the rope key (see ``torch_mla``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pdcore.hookspecs import Availability

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class KVLayout:
    """The KV cache layout a backend needs, checked against the pool at startup.

    ``page_sizes``: page sizes the kernels accept (empty = any).
    ``kind``: "mha" (separate K and V, GQA included) or "mla" (one latent buffer).
    ``cache_layout``: "NHD" = ``[pages, page_size, heads, dim]``; backends that need
    another physical layout declare it and the pool allocates accordingly.
    """

    kind: str = "mha"
    page_sizes: tuple[int, ...] = ()
    cache_layout: str = "NHD"

    def accepts_page_size(self, page_size: int) -> bool:
        return not self.page_sizes or page_size in self.page_sizes


@dataclass(frozen=True)
class AttentionConfig:
    """Static shape of one attention layer, handed to the backend factory."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: Any = None  # torch.dtype of q/k/v and the cache
    device: Any = None  # torch.device
    scale: float | None = None  # softmax scale; default head_dim ** -0.5
    # The backend's plugin options (its own flags; see pdcore.plugin_options).
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else self.head_dim**-0.5


@dataclass
class AttentionMetadata:
    """What one forward pass attends over, shared by all layers.

    ``page_table``: int64 ``[batch, max_pages]``, page ids of each request
    (rows padded with any valid id past the request's last page).
    ``seq_lens``: tokens per request after this step (cached prefix + new).
    ``extend_lens``: new tokens per request in this step (1 for decode).
    ``cache_slots``: int64 ``[num_new_tokens]``, flat slot ``page * page_size +
    offset`` where each new token's K/V must be stored, in q order.
    The ``*_cpu`` lists mirror the lengths for host-side loops without syncs.
    """

    is_decode: bool
    page_table: torch.Tensor
    seq_lens: torch.Tensor
    extend_lens: torch.Tensor
    cache_slots: torch.Tensor
    seq_lens_cpu: list[int] = field(default_factory=list)
    extend_lens_cpu: list[int] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def prefix_lens_cpu(self) -> list[int]:
        return [s - e for s, e in zip(self.seq_lens_cpu, self.extend_lens_cpu, strict=True)]


class AttentionImpl(ABC):
    """Kernels of one attention backend for one model (all layers share it).

    ``cuda_graph_safe``: a decode pass planned once may be captured in a CUDA
    graph and replayed with new metadata copied into the same tensors: ``plan``
    keeps no host-side decision that depends on values beyond ``seq_lens_cpu``
    being an upper bound, and ``forward`` never synchronizes with the host.
    """

    cuda_graph_safe: bool = False

    def __init__(self, config: AttentionConfig):
        self.config = config
        self.meta: AttentionMetadata | None = None

    def plan(self, meta: AttentionMetadata) -> None:
        """Prepare for a forward pass; called once before the layers run."""
        self.meta = meta

    def plan_capture(self, meta: AttentionMetadata) -> None:
        """Plan the decode pass that a CUDA graph captures. ``meta`` holds the
        graph's static device tensors, which every replay rewrites in place, and
        ``seq_lens_cpu`` at the longest context the graph may see."""
        self.plan(meta)

    def plan_replay(self, seq_lens: list[int], pages: list[list[int]]) -> None:
        """Before a replay: this step's sequence lengths and each row's page ids on
        the host, padding rows included (the captured batch size); the static
        metadata tensors already hold the step. Kernels that read the step from
        those tensors (pdcore's Triton) need nothing here, as by default; backends
        whose captured kernels follow a schedule that ``plan`` computes on the host
        from the lengths (FlashInfer) override it."""

    @property
    def replans_for_graph(self) -> bool:
        """``plan_replay`` does work, so each replay must call it (derived: the class
        overrides it; graphs of the others skip building its arguments)."""
        return type(self).plan_replay is not AttentionImpl.plan_replay

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Store ``k``/``v`` at ``meta.cache_slots`` and return attention output.

        ``q``: ``[T, num_heads, head_dim]``; ``k``, ``v``: ``[T, num_kv_heads,
        head_dim]`` with T = sum of ``extend_lens``; caches as in the module
        docstring. New token ``j`` of a request with prefix length ``p`` attends
        causally to positions ``0..p+j``. Returns ``[T, num_heads, head_dim]`` in
        ``q``'s dtype (a bfloat16 model gets bfloat16 back, whatever the kernel
        accumulates in). Grouped-query attention: query head ``h`` attends with
        KV head ``h // (num_heads // num_kv_heads)``.
        """


def store_kv(k, v, k_cache, v_cache, cache_slots) -> None:
    """Write new K/V rows into the paged caches at flat slot indices."""
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    k_cache.view(num_pages * page_size, *k_cache.shape[2:])[cache_slots] = k
    v_cache.view(num_pages * page_size, *v_cache.shape[2:])[cache_slots] = v


@dataclass(frozen=True)
class AttentionBackend:
    """Registration object returned from ``pdcore_attention_backends``.

    ``platforms``: platform names the kernels run on. ``priority`` picks the
    default among available backends of a platform; ``decode_priority``, where
    set, picks the default for decode passes instead (a backend whose prefill
    is the best but whose decode is not). ``check`` may import the kernel
    library; it is only called when availability is asked for.
    """

    name: str
    factory: Callable[[AttentionConfig], AttentionImpl]
    platforms: tuple[str, ...]
    kv_layout: KVLayout = KVLayout()
    check: Callable[[], Availability] = field(default=lambda: Availability.yes())
    priority: int = 0
    description: str = ""
    decode_priority: int | None = None
    dtypes: tuple[str, ...] = ()  # torch dtype names the kernels compute in (empty: any)
    head_dims: tuple[int, ...] = ()  # head sizes they have kernels for (empty: any)

    kind = "attention"

    def refuses(self, dtype: str | None = None, head_dim: int | None = None) -> str | None:
        """Why these kernels cannot serve a model of ``dtype``/``head_dim``, or None."""
        if dtype and self.dtypes and dtype not in self.dtypes:
            return f"computes in {', '.join(self.dtypes)}, not {dtype}"
        if head_dim and self.head_dims and head_dim not in self.head_dims:
            return f"has kernels for head_dim {', '.join(map(str, self.head_dims))}, not {head_dim}"
        return None

    def priority_for(self, phase: str | None) -> int:
        """The default-picking priority for "prefill", "decode" or either (None)."""
        if phase == "decode" and self.decode_priority is not None:
            return self.decode_priority
        return self.priority
