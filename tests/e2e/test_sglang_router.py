"""SGLang's own router (sglang-router from PyPI) in PD mode in front of pdcore.

A user's first PD deployment: pdcore's prefill and decode servers (Mooncake over
127.0.0.1) behind ``python -m sglang_router.launch_router --pd-disaggregation``.
Through it, ``/v1/models`` lists pdcore's served model name, and a chat request
without ``model`` (which the router forwards as "unknown") and a ``/generate``
request are answered greedy-equal to a null-mode server.
"""

from __future__ import annotations

import pytest
from e2e.null_engine import NullEngine
from e2e.pd_helpers import MAX_NEW, assert_same_greedy, gen_body, logs
from e2e.server_process import ServerProcess, free_port
from e2e.sglang_router_process import SglangRouterProcess
from router.cluster import decode_args, prefill_args, start_parallel

pytest.importorskip(
    "sglang_router", reason="sglang-router is not installed (scripts/setup.sh installs it)"
)


NAME = "tiny-qwen3-chat"
FLAGS = ("--served-model-name", NAME, "--skip-server-warmup")
CHAT = {
    "messages": [{"role": "user", "content": "Count to five."}],
    "max_tokens": MAX_NEW,
    "temperature": 0,
    "ignore_eos": True,  # as the reference's sampling (gen_body)
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    """``(null, prefill, decode, router)``: a null-mode reference engine (in this
    process), the PD pair and SGLang's router in front of the pair; both servers
    serve the model as NAME."""
    bootstrap = free_port()
    null, prefill, decode = start_parallel(
        lambda: NullEngine(qwen3_path),
        lambda: ServerProcess(*prefill_args(qwen3_path, bootstrap), *FLAGS),
        lambda: ServerProcess(*decode_args(qwen3_path), *FLAGS),
    )
    router = None
    try:
        router = SglangRouterProcess(
            "--pd-disaggregation", "--prefill", prefill.url, str(bootstrap),
            "--decode", decode.url, "--log-level", "warn",
            workers=2,
        )  # fmt: skip
        yield null, prefill, decode, router
    finally:
        procs = [p for p in (router, decode, prefill) if p is not None]
        start_parallel(*(p.stop for p in procs))


def test_the_router_lists_the_served_model_name(cluster):
    *_, router = cluster
    r = router.get("/v1/models")
    ids = [m["id"] for m in r.json()["data"]]
    assert ids == [NAME], f"sgl-router reads served_model_name from /server_info: {r.text}"


def test_a_chat_without_model_through_the_router_equals_null_mode(cluster):
    """The router forwards a request without 'model' as model "unknown"."""
    null, prefill, decode, router = cluster
    got = router.post("/v1/chat/completions", CHAT)
    assert got.status_code == 200, f"{got.text}\n{router.log_tail()}\n{logs(prefill, decode)}"
    prompt = decode.post("/tokenize", {"messages": CHAT["messages"]}).json()["tokens"]
    want = null.generate(prompt)["output_ids"]
    text = decode.post("/detokenize", {"tokens": want}).json()["text"]
    assert got.json()["choices"][0]["message"]["content"] == text, "greedy PD = null mode"
    assert got.json()["usage"]["completion_tokens"] == MAX_NEW, got.json()


def test_generate_through_the_router_equals_null_mode(cluster, prompts):
    null, prefill, decode, router = cluster
    got = router.post("/generate", gen_body(prompts[0]))
    assert got.status_code == 200, f"{got.text}\n{router.log_tail()}\n{logs(prefill, decode)}"
    assert_same_greedy(got.json(), null.generate(prompts[0]), "/generate through sgl-router")
