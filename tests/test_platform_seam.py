"""A third platform needs no core change: ``emu`` (tests/emu_platform), an
outside distribution found through the ``pdcore`` entry point, runs engines and
servers with ``--device emu``.

Its tensors are host tensors, so only what goes through the ``Platform`` seam
can tell it from the CPU: its memory kind (VRAM) must reach the KV registration,
and its events and graph capture must drive overlap scheduling and decode
graphs, producing exactly the CPU's tokens.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import httpx
import pytest
from engine.harness import check_overlap_equals_plain, drain, greedy_req, make_engine, tiny
from engine.tiny_model import VOCAB
from server.harness import TINY_SERVER_SCRIPT, free_port, run_script, wait_healthy

from pdcore.config import ServerArgs
from pdcore.engine.engine import Engine
from pdcore.platform import MemoryKind

TESTS = Path(__file__).parent
# The emu plugin's package and the example plugin's TCP engine it builds on.
PLUGIN_PATHS = [str(TESTS / "emu_platform"), str(TESTS / "example_plugin")]
ENTRY_POINTS = "[pdcore]\nemu = pdcore_emu.plugin\n"


@pytest.fixture(scope="module")
def emu_site(tmp_path_factory):
    """``pdcore-emu`` installed as a distribution (its dist-info on sys.path, the
    package beside it), for this process and the servers it spawns."""
    site = tmp_path_factory.mktemp("emu-site")
    dist = site / "pdcore_emu-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pdcore-emu\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    paths = [str(site), *PLUGIN_PATHS]
    sys.path[:0] = paths
    importlib.invalidate_caches()
    from pdcore.registry import reset_registry

    reset_registry()
    yield os.pathsep.join([*paths, str(TESTS)])
    for p in paths:
        sys.path.remove(p)
    reset_registry()


@pytest.fixture
def emu(emu_site):
    """The emu platform object the registry hands the engine (events and graphs it made)."""
    from pdcore.registry import get_registry

    return get_registry().select_platform("emu")


def emu_engine(**server_args) -> Engine:
    """An engine on the tiny model with ``--device emu`` (its default attention)."""
    loaded = tiny()
    defaults = dict(
        device="emu",
        max_total_tokens=1024,
        page_size=4,
        chunked_prefill_size=16,
        cuda_graph_max_bs=8,
        context_length=160,  # requests here stay under 120 tokens; narrower graphs run faster
    )
    return Engine(loaded.model, loaded.config, ServerArgs(**{**defaults, **server_args}))


def test_kv_is_registered_with_the_platform_memory_kind(emu):
    engine = emu_engine(disaggregation_mode="decode", disaggregation_transfer_backend="emu-tcp")
    try:
        kinds = {r.kind for r in engine.pd.manager.engine.regions}
    finally:
        engine.close()
    assert kinds == {MemoryKind.VRAM}, (
        f"the KV pool of platform emu (memory kind VRAM) was registered as {kinds}: the "
        "memory kind must come from the platform, not from the torch device type"
    )


def test_engine_on_emu_decodes_through_its_graphs_and_events_like_the_cpu(emu):
    prompts = [[5, 9, 13, 2, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48], [3] * 20]
    want = drain_tokens(make_engine(), prompts)
    engine = emu_engine()
    assert engine.cuda_graph_sizes, "emu supports graphs: the engine must capture decode graphs"
    replays_before = sum(g.replays for g in emu.graphs)
    got = drain_tokens(engine, prompts)
    assert got == want, "emu computes on the host: its tokens must equal the CPU engine's"
    assert sum(g.replays for g in emu.graphs) > replays_before, "decode never replayed a graph"
    assert engine.overlapped_steps > 0, "emu makes events: decode steps must overlap"
    assert any(e.records for e in emu.events), "overlap must wait on the platform's events"


def test_overlap_on_emu_changes_no_token(emu):
    check_overlap_equals_plain(
        lambda overlap: emu_engine(disable_overlap_schedule=not overlap), vocab=VOCAB
    )


def drain_tokens(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    for i, p in enumerate(prompts):
        engine.add_request(greedy_req(f"r{i}", p, max_new_tokens=10))
    results = drain(engine)
    return [results[f"r{i}"].tokens for i in range(len(prompts))]


def test_a_server_with_device_emu_answers_as_the_cpu_server(emu_site):
    env = {"PYTHONPATH": emu_site}
    servers = {}
    try:
        for device in ("cpu", "emu"):
            port = free_port()
            script = TINY_SERVER_SCRIPT.format(port=port).replace(
                'device="cpu"', f'device="{device}"'
            )
            servers[device] = (run_script(script, env), f"http://127.0.0.1:{port}")
        answers = {}
        for device, (proc, url) in servers.items():
            wait_healthy(proc, url, timeout=120)
            body = {"input_ids": [5, 9, 13, 2, 7], "sampling_params": {"max_new_tokens": 8}}
            body["sampling_params"]["temperature"] = 0.0
            r = httpx.post(f"{url}/generate", json=body, timeout=60)
            assert r.status_code == 200, f"{device}: {r.status_code} {r.text}"
            answers[device] = r.json()["output_ids"]
            info = httpx.get(f"{url}/get_server_info", timeout=10).json()["engine_info"]
            if device == "emu":
                assert info["cuda_graph_batch_sizes"], "the emu server must decode through graphs"
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    assert answers["emu"] == answers["cpu"], f"--device emu answered {answers}"
