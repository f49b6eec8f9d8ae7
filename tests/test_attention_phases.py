"""Prefill and decode passes may run on different attention backends (SGLang's
``--prefill-attention-backend`` / ``--decode-attention-backend``): how each phase's
backend is chosen, and that the engine sends each pass to its phase's backend."""

from __future__ import annotations

import pytest
from engine.harness import drain, greedy_req, tiny
from fakes import attention_plugin, ep, module_with

from pdcore import registry as registry_mod
from pdcore.attention.base import AttentionBackend, KVLayout
from pdcore.attention.hybrid import HybridAttention
from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.config import ServerArgs
from pdcore.engine.engine import Engine
from pdcore.errors import ConfigError
from pdcore.registry import Registry


def discover(*plugins) -> Registry:
    eps = [ep(f"p{i}", f"pdcore-p{i}", module) for i, module in enumerate(plugins)]
    return Registry.discover(entry_points=eps, env={})


def phases(reg: Registry, **kw) -> tuple[str, str]:
    prefill, decode = reg.select_attention_phases(reg.get("platform", "cpu"), **kw)
    return prefill.name, decode.name


@pytest.fixture
def reg() -> Registry:
    """torch (builtin, priority 0); "fast-prefill": best prefill, worst decode."""
    return discover(attention_plugin("fast-prefill", priority=20, decode_priority=-5))


def test_each_phase_defaults_to_its_own_best_backend(reg):
    assert phases(reg) == ("fast-prefill", "torch")


def test_attention_backend_flag_sets_both_phases(reg):
    assert phases(reg, attention="fast-prefill") == ("fast-prefill", "fast-prefill")
    assert phases(reg, attention="torch") == ("torch", "torch")


def test_a_phase_flag_overrides_attention_backend_for_that_phase_only(reg):
    assert phases(reg, attention="torch", prefill="fast-prefill") == ("fast-prefill", "torch")
    assert phases(reg, decode="fast-prefill") == ("fast-prefill", "fast-prefill")


def test_unknown_phase_backend_names_its_flag(reg):
    with pytest.raises(ConfigError, match=r"--decode-attention-backend.*no-such"):
        phases(reg, decode="no-such")


def test_backends_with_different_kv_layouts_cannot_share_the_pool():
    reg = discover(attention_plugin("hnd", kv_layout=KVLayout(cache_layout="HND")))
    with pytest.raises(ConfigError, match=r"--decode-attention-backend.*share one KV pool"):
        phases(reg, prefill="torch", decode="hnd")


def test_the_default_skips_a_backend_that_refuses_the_dtype_or_head_dim():
    reg = discover(
        attention_plugin("half-only", priority=20, dtypes=("bfloat16",), head_dims=(64, 128))
    )
    assert phases(reg, dtype="bfloat16", head_dim=64) == ("half-only", "half-only")
    assert phases(reg, dtype="float32", head_dim=64) == ("torch", "torch")
    assert phases(reg, dtype="bfloat16", head_dim=32) == ("torch", "torch")


def test_an_explicit_backend_that_refuses_the_model_is_a_flag_error():
    reg = discover(attention_plugin("half-only", dtypes=("bfloat16",), head_dims=(64,)))
    with pytest.raises(ConfigError, match=r"--prefill-attention-backend.*not float32"):
        phases(reg, prefill="half-only", dtype="float32")
    with pytest.raises(ConfigError, match=r"--attention-backend.*head_dim 64, not 32"):
        phases(reg, attention="half-only", head_dim=32)


class Recording(TorchNativeAttention):
    """torch attention that remembers which kind of pass each plan was."""

    plans: list[bool] = []

    def plan(self, meta):
        super().plan(meta)
        Recording.plans.append(meta.is_decode)


@pytest.fixture
def recording_registry(monkeypatch) -> Registry:
    """The builtins plus "recording" (torch attention that logs its passes), as the
    process registry."""
    Recording.plans = []
    backend = AttentionBackend(name="recording", factory=Recording, platforms=("cpu",))
    reg = discover(module_with(pdcore_attention_backends=lambda: [backend]))
    monkeypatch.setattr(registry_mod, "get_registry", lambda: reg)
    return reg


def tiny_engine(**server_args) -> Engine:
    loaded = tiny()
    args = ServerArgs(max_total_tokens=1024, page_size=4, chunked_prefill_size=16, **server_args)
    return Engine(loaded.model, loaded.config, args, None, "cpu")


def run(engine: Engine) -> dict[str, list[int]]:
    for i, n in enumerate((5, 23, 40)):
        engine.add_request(greedy_req(f"r{i}", list(range(1, n + 1)), 6, ignore_eos=True))
    return {rid: r.tokens for rid, r in drain(engine).items()}


def test_engine_sends_decode_passes_to_the_decode_backend(recording_registry):
    engine = tiny_engine(prefill_attention_backend="torch", decode_attention_backend="recording")
    assert isinstance(engine.runner.attn, HybridAttention)
    assert engine.attention_name == "torch+recording"
    info = engine.info()
    assert (info["prefill_attention_backend"], info["decode_attention_backend"]) == (
        "torch",
        "recording",
    )
    tokens = run(engine)
    assert Recording.plans and all(Recording.plans), f"decode backend planned {Recording.plans}"
    assert tokens == run(tiny_engine(attention_backend="torch")), "hybrid changed tokens"


def test_engine_sends_prefill_passes_to_the_prefill_backend(recording_registry):
    engine = tiny_engine(prefill_attention_backend="recording", decode_attention_backend="torch")
    run(engine)
    assert Recording.plans and not any(Recording.plans), (
        f"prefill backend planned {Recording.plans}"
    )


def test_one_backend_for_both_phases_is_not_wrapped(recording_registry):
    engine = tiny_engine(attention_backend="recording")
    assert isinstance(engine.runner.attn, Recording)
    assert engine.attention_name == "recording"


class Replanning(Recording):
    """A decode backend that re-plans captured graphs, logging what it was given."""

    calls: list = []

    def plan_capture(self, meta):
        Replanning.calls.append(("capture", meta.batch_size))

    def plan_replay(self, seq_lens, pages):
        Replanning.calls.append(("replay", seq_lens, pages))


def test_hybrid_hands_graph_planning_to_the_decode_backend():
    from pdcore.attention.base import AttentionConfig, AttentionMetadata

    cfg = AttentionConfig(2, 1, 8, 4)
    Replanning.calls = []
    hybrid = HybridAttention(TorchNativeAttention(cfg), Replanning(cfg))
    assert hybrid.replans_for_graph and not hybrid.cuda_graph_safe
    assert not HybridAttention(Replanning(cfg), TorchNativeAttention(cfg)).replans_for_graph
    meta = AttentionMetadata(True, None, None, None, None, [8, 8], [1, 1])
    hybrid.plan_capture(meta)
    hybrid.plan_replay([3, 1], [[5], [0]])
    assert Replanning.calls == [("capture", 2), ("replay", [3, 1], [[5], [0]])]
