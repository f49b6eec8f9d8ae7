"""PD through the Ascend plugins on a CPU host, with faithful fakes of the NPU libraries.

Prefill and decode are real servers (``--device npu --attention-backend ascend
--disaggregation-transfer-backend ascend``) started with ``ascend_site`` on
PYTHONPATH: torch_npu is the CPU fake (its operators check their inputs like the
NPU kernels and compute with torch) and mf_adapter is the loopback binding that
copies the KV bytes from prefill's pool into decode's over TCP. Prefill creates
the memfabric config store (node 0) and both engines register there. Decode
never runs the prompt, so its greedy tokens equal a null-mode server's only if
the pages really arrived. What this cannot show: anything about real NPUs.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e.pd_helpers import COMMON, assert_idle, gen_body, pd_generate, pd_servers, room
from e2e.server_process import ServerProcess, free_port

SITE = Path(__file__).parent / "ascend_site"
DTYPE = ("--dtype", "bfloat16")  # the NPU kernels take float16/bfloat16, not float32
ASCEND = ("--device", "npu", "--attention-backend", "ascend", *DTYPE)
TIE = 1e-4  # a divergence is allowed only where the reference's top two were this close


@pytest.fixture
def fake_ascend_host(tmp_path) -> dict:
    """Environment of a fake Ascend host: the stand-ins, a driver layout, a store URL."""
    driver = tmp_path / "Ascend" / "driver"
    (driver / "lib64").mkdir(parents=True)
    (driver / "version.info").write_text("Version=CPU stand-in\n")
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])),
        "LD_LIBRARY_PATH": str(driver / "lib64"),
        "ASCEND_MF_STORE_URL": f"tcp://127.0.0.1:{free_port()}",
        "ASCEND_MF_TRANSFER_PROTOCOL": "sdma",
    }


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory, smollm2_path, smollm2_tokenizer) -> str:
    """The embedded SmolLM2 as an HF folder (safetensors + tokenizer.json).

    Real weights keep greedy choices clear of bf16 rounding (a random model's top two
    logits are often one bf16 step apart); the folder loads in a fraction of the
    GGUF's time, which three servers would otherwise pay each.
    """
    from safetensors.torch import save_file

    from pdcore.model.gguf_loader import gguf_model_config, gguf_weights, open_gguf

    folder = tmp_path_factory.mktemp("smollm2-hf")
    reader = open_gguf(smollm2_path)
    cfg = gguf_model_config(reader)
    weights = gguf_weights(reader, cfg)
    save_file({name: t.contiguous() for name, t in weights}, folder / "model.safetensors")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "head_dim")
    keys += ("num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta")
    keys += ("rope_scaling", "max_position_embeddings", "tie_word_embeddings", "bos_token_id")
    config = {key: getattr(cfg, key) for key in keys}
    config.update(architectures=[cfg.architecture], eos_token_id=cfg.eos_token_ids)
    (folder / "config.json").write_text(json.dumps(config))
    smollm2_tokenizer.hf.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def ascend_prompts(smollm2_tokenizer) -> list[list[int]]:
    """Short and long (over the 64-token chunk) prompts; the last two share a prefix."""
    encode = lambda text: smollm2_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    story = encode(
        "The lighthouse keeper climbed the spiral stairs every evening, counting each of the "
        "one hundred and twelve steps, listening to the waves below and thinking about the "
        "ships that had passed the rocks safely because of the lamp he kept burning."
    )
    return [
        encode("The capital of France is"),
        encode("List three colors:"),
        story + encode(" Why did he count the steps?"),
        story + encode(" What did the lamp do?"),
    ]


def null_mode_outputs(model: str, prompts) -> list[dict]:
    """The torch backend on the CPU, same dtype, no disaggregation."""
    null = ServerProcess("--model-path", model, *COMMON, *DTYPE)
    try:
        return [null.post("/generate", json=gen_body(p)).json() for p in prompts]
    finally:
        null.stop()


def same_greedy(out: dict, ref: dict, what: str) -> None:
    got, want = out["output_ids"], ref["output_ids"]
    if got == want:
        return
    step = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
    top2 = ref["meta_info"]["output_top_logprobs"][step]
    gap = abs(top2[0][0] - top2[1][0])
    assert gap < TIE, f"{what}: diverges at step {step} (top-2 gap {gap:.2e}): {got} != {want}"


@pytest.mark.slow
def test_pd_on_a_fake_ascend_host_matches_null_mode(
    smollm2_folder, ascend_prompts, fake_ascend_host
):
    with ThreadPoolExecutor(1) as pool:  # null mode's reference while the PD pair starts
        reference = pool.submit(null_mode_outputs, smollm2_folder, ascend_prompts)
        prefill, decode, port = pd_servers(
            smollm2_folder, "ascend", prefill_args=ASCEND, decode_args=ASCEND, env=fake_ascend_host
        )
    try:
        for server in (prefill, decode):
            info = server.get("/get_server_info").json()
            assert (info["attention_backend"], info["device"]) == ("ascend", "npu"), info
        pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in ascend_prompts]
        # The first three at once, then the fourth: it shares the third's long prefix,
        # which prefill may then serve from its prefix cache.
        results = asyncio.run(pd_generate(prefill, decode, bodies[:3]))
        results += asyncio.run(pd_generate(prefill, decode, bodies[3:]))
        for i, ((p_status, d_status, out), ref) in enumerate(
            zip(results, reference.result(), strict=True)
        ):
            assert (p_status, d_status) == (200, 200), out
            same_greedy(out, ref, f"prompt {i} ({len(ascend_prompts[i])} tokens)")
        stats = decode.get("/get_server_info").json()["disaggregation"]
        assert (stats["rooms_succeeded"], stats["rooms_failed"]) == (len(bodies), 0), stats
        assert_idle(prefill, decode)
    finally:
        decode.stop()
        prefill.stop()
