"""PD disaggregation of a tiny DeepSeek-V3 (MLA + MoE) through real servers.

Prefill pushes the latent KV cache (one tensor per layer) to decode over
Mooncake (TCP) and NIXL (UCX) on 127.0.0.1, with different TP sizes on the two
sides; greedy outputs equal null mode's
token for token, and afterwards neither server holds a page or a room. A few
prompts only: one longer than the chunked-prefill size (several chunk
transfers), two sharing a prefix, one short.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from e2e.pd_helpers import (
    COMMON,
    assert_idle,
    assert_same_greedy,
    gen_body,
    pd_generate,
    pd_servers,
    room,
)
from e2e.server_process import ServerProcess

PICK = (2, 4, 5, 0)  # long (> CHUNK), two sharing a prefix, short


@pytest.fixture(scope="module")
def deepseek_path(tmp_path_factory, smollm2_tokenizer) -> str:
    from e2e.e2e_helpers import tiny_checkpoint

    folder = tmp_path_factory.mktemp("deepseek_v3")
    tiny_checkpoint(folder, "deepseek_v3", smollm2_tokenizer, seed=6, q_lora_rank=24)
    return str(folder)


@pytest.fixture(scope="module")
def few_prompts(prompts) -> list[list[int]]:
    return [prompts[i] for i in PICK]


@pytest.fixture(scope="module")
def null_outputs(deepseek_path, few_prompts) -> list[dict]:
    server = ServerProcess("--model-path", deepseek_path, *COMMON)
    try:
        info = server.get("/get_server_info").json()["engine_info"]
        assert info["attention_backend"] == "torch_mla"
        return asyncio.run(_post_all(server.url, [gen_body(p) for p in few_prompts]))
    finally:
        server.stop()


async def _post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*(client.post(f"{url}/generate", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


# Each engine with prefill and decode at different TP sizes: the latent is whole on
# every rank, so the prefill leader writes it to each decode rank straight from its
# pool (no staging); TP=1 on both sides is covered in tests/disaggregation/test_pd_mla.py.
CASES = [("mooncake", 1, 2), ("nixl", 2, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "p_tp", "d_tp"), CASES)
def test_deepseek_pd_matches_null_mode(
    backend, p_tp, d_tp, deepseek_path, few_prompts, null_outputs
):
    prefill, decode, port = pd_servers(
        deepseek_path,
        backend,
        prefill_args=("--tp-size", str(p_tp)),
        decode_args=("--tp-size", str(d_tp)),
    )
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in few_prompts]
        results = asyncio.run(pd_generate(prefill, decode, bodies))
        for i, ((p_status, d_status, out), ref) in enumerate(
            zip(results, null_outputs, strict=True)
        ):
            assert (p_status, d_status) == (200, 200), out
            assert_same_greedy(out, ref, f"prompt {i} (len {len(few_prompts[i])})")
            first = out["meta_info"]["output_token_logprobs"][0]
            want = ref["meta_info"]["output_token_logprobs"][0]
            assert first[1] == want[1] and abs(first[0] - want[0]) < 1e-4
        info = decode.get("/get_server_info").json()
        assert info["engine_info"]["attention_backend"] == "torch_mla"
        assert info["disaggregation"]["rooms_succeeded"] == len(bodies)
        assert_idle(prefill, decode)
        for server in (prefill, decode):
            stats = server.get("/get_server_info").json()["disaggregation"]
            assert stats["rooms_failed"] == 0
    finally:
        decode.stop()
        prefill.stop()
