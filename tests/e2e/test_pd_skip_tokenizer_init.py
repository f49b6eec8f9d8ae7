"""``--skip-tokenizer-init`` on a real PD pair, with a model folder that has no
tokenizer at all: ids in, ids out, greedy-equal to null mode, stop token ids
honoured, text refused with a 400 naming the flag. Both servers warm up (their
probe needs no tokenizer either)."""

from __future__ import annotations

import asyncio

import pytest
from e2e.null_engine import NullEngine
from e2e.pd_helpers import assert_idle, assert_pd_equals, gen_body, logs, pd_generate, room
from e2e.server_process import ServerProcess, free_port
from router.cluster import decode_args, prefill_args, start_parallel

from pdcore.model.loader import TOKENIZER_FILES

FLAG = "--skip-tokenizer-init"
PROMPTS = [[5, 17, 301, 44, 9, 120, 77], list(range(40, 140))]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory) -> str:
    """A tiny random Qwen3 folder: config and weights, no tokenizer file."""
    from model.model_helpers import make_checkpoint

    folder = tmp_path_factory.mktemp("no-tokenizer")
    make_checkpoint(folder, "qwen3", seed=11, max_position_embeddings=1024)
    assert not any((folder / name).exists() for name in TOKENIZER_FILES)
    return str(folder)


@pytest.fixture(scope="module")
def servers(bare_model):
    """``(null, prefill, decode, bootstrap_port)``; null: the engine in this process."""
    bootstrap = free_port()
    null, prefill, decode = start_parallel(
        lambda: NullEngine(bare_model),
        lambda: ServerProcess(*prefill_args(bare_model, bootstrap), FLAG),
        lambda: ServerProcess(*decode_args(bare_model), FLAG),
    )
    try:
        yield null, prefill, decode, bootstrap
    finally:
        start_parallel(prefill.stop, decode.stop)


def pd_body(port: int, prompt: list[int], **sampling) -> dict:
    body = gen_body(prompt, bootstrap_host="127.0.0.1", bootstrap_port=port, bootstrap_room=room())
    body["sampling_params"].update(sampling)
    return body


def test_pd_answers_ids_only_equal_to_null_mode(servers):
    null, prefill, decode, port = servers
    refs = [null.generate(p) for p in PROMPTS]
    bodies = [pd_body(port, p) for p in PROMPTS]
    outs = assert_pd_equals(prefill, decode, bodies, refs, "PD without a tokenizer")
    assert all("text" not in out for out in outs), f"ids in, ids out (as SGLang): {outs}"
    assert_idle(prefill, decode)


def test_pd_stops_at_a_stop_token_id(servers):
    null, prefill, decode, port = servers
    ref = null.generate(PROMPTS[0])["output_ids"]
    stop = next(t for t in ref[2:] if t not in ref[:2])  # decode, not prefill, meets it
    body = pd_body(port, PROMPTS[0], stop_token_ids=[stop])
    ((p_status, d_status, out),) = asyncio.run(pd_generate(prefill, decode, [body]))
    assert (p_status, d_status) == (200, 200), f"{out}\n{logs(prefill, decode)}"
    assert out["output_ids"] == ref[: ref.index(stop) + 1], out
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}, out


@pytest.mark.parametrize("which", [1, 2])
def test_text_is_refused_naming_the_flag(servers, which):
    server = servers[which]
    r = server.post("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 400 and FLAG in r.json()["error"]["message"], r.text
    info = server.get("/model_info").json()
    assert info["tokenizer_path"] is None, f"no tokenizer is loaded: {info}"
