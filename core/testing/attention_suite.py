"""Conformance suite for attention backends: numerics over random paged inputs.

Each case scatters requests over randomly permuted pages, pre-fills the cached
prefix, runs the backend once (extend or decode) and compares against a dense
float64 reference computed without any paging. It also checks that the new
K/V rows landed in their slots and that no other cache row changed. On a CUDA
device, backends that declare ``cuda_graph_safe`` also get a decode pass
captured once in a CUDA graph and replayed for other batches, as the engine's
decode graphs do.
Subclass ``AttentionBackendSuite``, set ``backend_name`` (or ``factory_path``),
and optionally ``device``, ``dtype``, ``atol``/``rtol``; ``extra_dtypes`` are
further input dtypes (bfloat16 by default) whose outputs must keep the query's
dtype.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

from pdcore.attention.base import AttentionConfig, AttentionImpl, AttentionMetadata  # noqa: E402


@dataclass
class PagedCase:
    cfg: AttentionConfig
    meta: AttentionMetadata
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    full_k: list  # per request, dense [seq_len, KH, D] (prefix + new)
    full_v: list


def make_case(
    *,
    seq_lens,
    extend_lens,
    num_heads,
    num_kv_heads,
    head_dim,
    page_size,
    dtype,
    device,
    seed=0,
    scale=None,
    num_pages=None,
) -> PagedCase:
    """Random requests scattered over a shuffled page pool, prefix already cached."""
    gen = torch.Generator().manual_seed(seed)
    pages_per_req = [-(-s // page_size) for s in seq_lens]
    total = num_pages or sum(pages_per_req) + 3
    perm = torch.randperm(total, generator=gen)
    cfg = AttentionConfig(num_heads, num_kv_heads, head_dim, page_size, dtype, device, scale)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)

    k_cache = rand(total, page_size, num_kv_heads, head_dim).to(device)
    v_cache = rand(total, page_size, num_kv_heads, head_dim).to(device)
    width = max(pages_per_req)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int64)
    slots, full_k, full_v, new_k, new_v, qs = [], [], [], [], [], []
    used = 0
    for i, (seq, ext) in enumerate(zip(seq_lens, extend_lens, strict=True)):
        pages = perm[used : used + pages_per_req[i]]
        used += pages_per_req[i]
        table[i, : len(pages)] = pages
        table[i, len(pages) :] = pages[0]
        fk, fv = rand(seq, num_kv_heads, head_dim), rand(seq, num_kv_heads, head_dim)
        full_k.append(fk)
        full_v.append(fv)
        pos = torch.arange(seq)
        flat = pages[pos // page_size] * page_size + pos % page_size
        prefix = seq - ext
        k_cache.view(-1, num_kv_heads, head_dim)[flat[:prefix]] = fk[:prefix].to(device)
        v_cache.view(-1, num_kv_heads, head_dim)[flat[:prefix]] = fv[:prefix].to(device)
        slots.append(flat[prefix:])
        new_k.append(fk[prefix:])
        new_v.append(fv[prefix:])
        qs.append(rand(ext, num_heads, head_dim))
    meta = AttentionMetadata(
        is_decode=all(e == 1 for e in extend_lens) and any(s > 1 for s in seq_lens),
        page_table=table.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
        extend_lens=torch.tensor(extend_lens, dtype=torch.int64, device=device),
        cache_slots=torch.cat(slots).to(device),
        seq_lens_cpu=list(seq_lens),
        extend_lens_cpu=list(extend_lens),
    )
    return PagedCase(
        cfg,
        meta,
        torch.cat(qs).to(device),
        torch.cat(new_k).to(device),
        torch.cat(new_v).to(device),
        k_cache,
        v_cache,
        full_k,
        full_v,
    )


def reference(case: PagedCase) -> torch.Tensor:
    """Dense float64 causal attention per request, no paging involved."""
    cfg = case.cfg
    group = cfg.num_heads // cfg.num_kv_heads
    outs, start = [], 0
    for fk, fv, seq, ext in zip(
        case.full_k, case.full_v, case.meta.seq_lens_cpu, case.meta.extend_lens_cpu, strict=True
    ):
        q = case.q[start : start + ext].double().cpu()
        k = fk.double().repeat_interleave(group, dim=1)
        v = fv.double().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * cfg.softmax_scale
        q_pos = torch.arange(seq - ext, seq)
        scores[:, torch.arange(seq)[None, :] > q_pos[:, None]] = float("-inf")
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v))
        start += ext
    return torch.cat(outs)


SHAPES = {  # (num_heads, num_kv_heads, head_dim)
    "mha": (4, 4, 32),
    "gqa": (8, 2, 64),
}
BATCHES = {  # (seq_lens, extend_lens)
    "prefill-no-prefix": ([5, 33, 17], [5, 33, 17]),
    "prefill-with-prefix": ([40, 23, 64], [8, 23, 1 + 15]),
    "chunk-unaligned-prefix": ([37, 50], [11, 3]),
    "decode": ([1, 9, 16, 17, 70], [1, 1, 1, 1, 1]),
}


class AttentionBackendSuite:
    backend_name: str = ""
    factory_path: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    page_sizes: tuple[int, ...] = (1, 16)
    atol: float = 2e-4
    rtol: float = 2e-3
    # shape name -> why the backend refuses it (e.g. a head_dim it has no kernel for)
    unsupported_shapes: dict[str, str] = {}
    # input dtypes besides ``dtype`` whose output dtype is checked (not the numerics)
    extra_dtypes: tuple[str, ...] = ("bfloat16",)

    def build(self, cfg: AttentionConfig) -> AttentionImpl:
        if self.factory_path:
            module, _, attr = self.factory_path.partition(":")
            return getattr(importlib.import_module(module), attr)(cfg)
        from pdcore.registry import Registry

        return Registry.discover().get("attention", self.backend_name).factory(cfg)

    def _refuses(self, dtype: str) -> bool:
        if self.factory_path:
            return False
        from pdcore.registry import Registry

        backend = Registry.discover().get("attention", self.backend_name)
        return backend.refuses(dtype=dtype) is not None

    def _run_case(self, shape, batch, page_size, scale=None, seed=0, dtype=None):
        if shape in self.unsupported_shapes:
            pytest.skip(f"{shape}: {self.unsupported_shapes[shape]}")
        heads, kv_heads, dim = SHAPES[shape]
        seq_lens, ext_lens = BATCHES[batch]
        case = make_case(
            seq_lens=seq_lens,
            extend_lens=ext_lens,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=dim,
            page_size=page_size,
            dtype=getattr(torch, dtype or self.dtype),
            device=torch.device(self.device),
            seed=seed,
            scale=scale,
        )
        impl = self.build(case.cfg)
        untouched = torch.ones(case.k_cache.shape[0] * page_size, dtype=torch.bool)
        untouched[case.meta.cache_slots.cpu()] = False
        k_before = case.k_cache.view(-1, kv_heads, dim)[untouched.to(self.device)].clone()
        impl.plan(case.meta)
        out = impl.forward(case.q, case.k, case.v, case.k_cache, case.v_cache)
        return case, out, untouched, k_before

    @pytest.mark.parametrize("batch", list(BATCHES))
    @pytest.mark.parametrize("shape", list(SHAPES))
    def test_matches_dense_reference(self, shape, batch):
        for page_size in self.page_sizes:
            case, out, _, _ = self._run_case(shape, batch, page_size)
            assert out.shape == case.q.shape, f"output shape {tuple(out.shape)}"
            torch.testing.assert_close(
                out.double().cpu(),
                reference(case),
                atol=self.atol,
                rtol=self.rtol,
                msg=lambda m, ps=page_size: f"{shape}/{batch}/page_size={ps}: {m}",
            )

    @pytest.mark.parametrize("batch", ["prefill-with-prefix", "decode"])
    def test_output_dtype_is_the_query_dtype(self, batch):
        for dtype in dict.fromkeys((self.dtype, *self.extra_dtypes)):
            if dtype != self.dtype and self._refuses(dtype):
                continue  # the registration says the kernels do not compute in it
            case, out, _, _ = self._run_case("gqa", batch, self.page_sizes[-1], dtype=dtype)
            assert out.dtype == case.q.dtype, (
                f"{batch}: {dtype} inputs gave a {out.dtype} output; the next layer expects "
                f"the query's dtype {case.q.dtype}"
            )

    @pytest.mark.parametrize("batch", ["prefill-with-prefix", "decode"])
    def test_new_kv_stored_in_their_slots(self, batch):
        case, _, _, _ = self._run_case("gqa", batch, self.page_sizes[-1])
        _, kv_heads, dim = SHAPES["gqa"]
        stored_k = case.k_cache.view(-1, kv_heads, dim)[case.meta.cache_slots]
        stored_v = case.v_cache.view(-1, kv_heads, dim)[case.meta.cache_slots]
        assert torch.equal(stored_k.cpu(), case.k.cpu()), "new K rows not at cache_slots"
        assert torch.equal(stored_v.cpu(), case.v.cpu()), "new V rows not at cache_slots"

    def test_other_cache_rows_untouched(self):
        case, _, untouched, k_before = self._run_case(
            "gqa", "prefill-with-prefix", self.page_sizes[-1]
        )
        _, kv_heads, dim = SHAPES["gqa"]
        after = case.k_cache.view(-1, kv_heads, dim)[untouched.to(self.device)]
        assert torch.equal(after, k_before), "the backend wrote outside cache_slots"

    def test_custom_softmax_scale_is_used(self):
        case, out, _, _ = self._run_case(
            "mha", "prefill-no-prefix", self.page_sizes[-1], scale=0.05
        )
        torch.testing.assert_close(
            out.double().cpu(), reference(case), atol=self.atol, rtol=self.rtol
        )

    def test_replan_between_batches(self):
        """One impl serves successive batches of different shapes (plan per pass)."""
        heads, kv_heads, dim = SHAPES["gqa"]
        impl = None
        for seed, batch in enumerate(["prefill-no-prefix", "decode", "prefill-with-prefix"]):
            seq_lens, ext_lens = BATCHES[batch]
            case = make_case(
                seq_lens=seq_lens,
                extend_lens=ext_lens,
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=dim,
                page_size=self.page_sizes[-1],
                dtype=getattr(torch, self.dtype),
                device=torch.device(self.device),
                seed=seed,
                num_pages=40,
            )
            impl = impl or self.build(case.cfg)
            impl.plan(case.meta)
            out = impl.forward(case.q, case.k, case.v, case.k_cache, case.v_cache)
            torch.testing.assert_close(
                out.double().cpu(),
                reference(case),
                atol=self.atol,
                rtol=self.rtol,
                msg=lambda m, b=batch: f"{b}: {m}",
            )

    @pytest.mark.parametrize("shape", list(SHAPES))
    def test_captured_decode_replays_match_reference(self, shape):
        """A decode pass captured once at a padded batch size, then replayed for
        batches of other sizes, lengths and pages (with ``plan_replay`` where the
        backend asks for it), matches the reference; padding rows write only the
        padding page."""
        if self.device != "cuda":
            pytest.skip("CUDA graphs need a CUDA device")
        if shape in self.unsupported_shapes:
            pytest.skip(f"{shape}: {self.unsupported_shapes[shape]}")
        heads, kv_heads, dim = SHAPES[shape]
        dtype, device = getattr(torch, self.dtype), torch.device("cuda")
        ps, bs = self.page_sizes[-1], 8
        width = -(-128 // ps)  # contexts up to 128 tokens
        pad = bs * width  # the last page: padding rows point at it
        impl = self.build(AttentionConfig(heads, kv_heads, dim, ps, dtype, device))
        if not impl.cuda_graph_safe:
            pytest.skip(f"{type(impl).__name__} is not cuda_graph_safe")
        k_cache = torch.zeros(pad + 1, ps, kv_heads, dim, dtype=dtype, device=device)
        v_cache = torch.zeros_like(k_cache)
        q = torch.zeros(bs, heads, dim, dtype=dtype, device=device)
        k = torch.zeros(bs, kv_heads, dim, dtype=dtype, device=device)
        v = torch.zeros_like(k)
        meta = AttentionMetadata(
            is_decode=True,
            page_table=torch.full((bs, width), pad, dtype=torch.int64, device=device),
            seq_lens=torch.ones(bs, dtype=torch.int64, device=device),
            extend_lens=torch.ones(bs, dtype=torch.int64, device=device),
            cache_slots=torch.full((bs,), pad * ps, dtype=torch.int64, device=device),
            seq_lens_cpu=[width * ps] * bs,
            extend_lens_cpu=[1] * bs,
        )
        impl.plan_capture(meta)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            impl.forward(q, k, v, k_cache, v_cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = impl.forward(q, k, v, k_cache, v_cache)
        for seed, lens in enumerate(([1, 9, 16, 17, 70], [33] * bs, [120, 3], [2])):
            n = len(lens)
            case = make_case(
                seq_lens=lens, extend_lens=[1] * n, num_heads=heads, num_kv_heads=kv_heads,
                head_dim=dim, page_size=ps, dtype=dtype, device=device, seed=seed, num_pages=pad,
            )  # fmt: skip
            k_cache[:pad].copy_(case.k_cache)
            v_cache[:pad].copy_(case.v_cache)
            pages = [case.meta.page_table[i, : -(-s // ps)].tolist() for i, s in enumerate(lens)]
            meta.page_table.fill_(pad)
            for i, row in enumerate(pages):
                meta.page_table[i, : len(row)] = torch.tensor(row)
            meta.seq_lens.fill_(1)
            meta.seq_lens[:n] = torch.tensor(lens)
            meta.cache_slots.fill_(pad * ps)
            meta.cache_slots[:n] = case.meta.cache_slots
            q.normal_(), k.normal_(), v.normal_()
            q[:n], k[:n], v[:n] = case.q, case.k, case.v
            if impl.replans_for_graph:
                impl.plan_replay(lens + [1] * (bs - n), pages + [[pad]] * (bs - n))
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(
                out[:n].double().cpu(),
                reference(case),
                atol=self.atol,
                rtol=self.rtol,
                msg=lambda m, b=lens: f"{shape}, replay for lengths {b}: {m}",
            )
            want_k = case.k_cache.clone()
            want_k.view(-1, kv_heads, dim)[case.meta.cache_slots] = case.k
            assert torch.equal(k_cache[:pad], want_k), f"lengths {lens}: K cache rows wrong"
