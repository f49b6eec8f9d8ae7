"""Server flags: SGLang's PD commands parse unchanged; bad input names the flag."""

from __future__ import annotations

import shlex

import pytest

from pdcore.launch_server import parse_server_args
from pdcore.registry import Registry

LLAMA_PREFILL = (
    "--model-path meta-llama/Llama-3.1-8B-Instruct --disaggregation-mode prefill "
    "--port 30000 --disaggregation-ib-device mlx5_roce0"
)
LLAMA_DECODE_NIXL = (
    "--model-path meta-llama/Llama-3.1-8B-Instruct --disaggregation-mode decode "
    "--port 30001 --base-gpu-id 1 --disaggregation-transfer-backend nixl"
)
DEEPSEEK_DECODE = (
    "--model-path deepseek-ai/DeepSeek-V3-0324 --disaggregation-ib-device mlx5_0 "
    "--disaggregation-mode decode --host 127.0.0.1 --port 30001 --trust-remote-code "
    "--dist-init-addr 10.0.0.1:5000 --nnodes 2 --node-rank 1 --tp-size 16 --dp-size 8 "
    "--enable-dp-attention --moe-a2a-backend none --mem-fraction-static 0.8 "
    "--max-running-requests 128"
)


@pytest.fixture(scope="module")
def registry():
    return Registry.discover(env={})


def parse(registry, argv: str):
    return parse_server_args(shlex.split(argv), registry, prog="pdcore serve")[0]


def flag_error(registry, capsys, argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(registry, argv)
    assert exc.value.code == 2, "invalid flags must exit with status 2"
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [LLAMA_PREFILL, LLAMA_DECODE_NIXL, DEEPSEEK_DECODE])
def test_sglang_doc_commands_parse_unchanged(registry, argv):
    args = parse(registry, argv)
    assert args.model_path.endswith(("Instruct", "0324"))


def test_deepseek_flags_land_in_server_args(registry):
    args = parse(registry, DEEPSEEK_DECODE)
    assert (args.tp_size, args.dp_size, args.nnodes, args.node_rank) == (16, 8, 2, 1)
    assert args.enable_dp_attention and args.trust_remote_code
    assert args.dist_init_addr == "10.0.0.1:5000" and args.max_running_requests == 128
    assert args.disaggregation_ib_device == "mlx5_0" and args.mem_fraction_static == 0.8


def test_defaults_match_sglang(registry):
    args = parse(registry, "")
    assert args.disaggregation_mode == "null"
    assert args.disaggregation_transfer_backend == "mooncake"
    assert args.disaggregation_bootstrap_port == 8998
    assert args.port == 30000


CASES = {
    "node rank beyond nnodes": (
        "--nnodes 2 --node-rank 2 --dist-init-addr 127.0.0.1:5000",
        "--node-rank: 2 is out of range for --nnodes 2",
    ),
    "negative node rank": ("--node-rank -1", "--node-rank"),
    "nnodes without dist-init-addr": ("--nnodes 2 --tp-size 2", "--dist-init-addr: is required"),
    "malformed dist-init-addr": (
        "--dist-init-addr localhost",
        "--dist-init-addr: expected HOST:PORT",
    ),
    "tp not divisible by nnodes": (
        "--nnodes 2 --tp-size 3 --dist-init-addr 127.0.0.1:5000",
        "--tp-size: 3 must be divisible by --nnodes 2",
    ),
    "dp not dividing tp under dp attention": (
        "--tp-size 4 --dp-size 3 --enable-dp-attention",
        "--dp-size: 3 must divide --tp-size 4",
    ),
    "zero tp": ("--tp-size 0", "--tp-size: must be a positive integer"),
    "mem fraction above one": ("--mem-fraction-static 1.5", "--mem-fraction-static"),
    "mem fraction zero": ("--mem-fraction-static 0", "--mem-fraction-static"),
    "port out of range": ("--port 70000", "--port: must be a TCP port"),
    "bootstrap port out of range": (
        "--disaggregation-bootstrap-port 0",
        "--disaggregation-bootstrap-port: must be a TCP port",
    ),
    "bootstrap port equals http port": (
        "--disaggregation-mode prefill --port 8998",
        "--disaggregation-bootstrap-port: must differ from --port",
    ),
    "zero max running requests": ("--max-running-requests 0", "--max-running-requests"),
    "zero page size": ("--page-size 0", "--page-size"),
    "chunk below page size": ("--page-size 64 --chunked-prefill-size 32", "--chunked-prefill-size"),
    "negative chunk": ("--chunked-prefill-size -5", "--chunked-prefill-size"),
    "tiny token budget": ("--max-total-tokens 4", "--max-total-tokens"),
    "negative base gpu id": ("--base-gpu-id -1", "--base-gpu-id"),
    "unknown disaggregation mode": ("--disaggregation-mode both", "--disaggregation-mode"),
    "unknown transfer backend": (
        "--disaggregation-mode decode --disaggregation-transfer-backend carrier-pigeon",
        "--disaggregation-transfer-backend: Unknown transfer backend 'carrier-pigeon'. "
        "Choose one of:",
    ),
    "transfer backend not available here": (
        "--disaggregation-mode prefill --disaggregation-transfer-backend ascend",
        "--disaggregation-transfer-backend: transfer backend 'ascend'",
    ),
    "unknown device": ("--device tpu", "--device: Unknown platform backend 'tpu'. Choose one of:"),
    "device not available here": ("--device cuda", "--device: platform backend 'cuda'"),
    "unknown attention backend": (
        "--attention-backend fa9",
        "--attention-backend: Unknown attention backend 'fa9'",
    ),
    "unknown prefill attention backend": (
        "--prefill-attention-backend fa9",
        "--prefill-attention-backend: Unknown attention backend 'fa9'",
    ),
    "deepep without its library": ("--moe-a2a-backend deepep", "--moe-a2a-backend: deepep needs"),
    "decode tp outside prefill mode": (
        "--disaggregation-decode-tp 2",
        "--disaggregation-decode-tp: only applies",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_flags_fail_fast_naming_the_flag(registry, capsys, case):
    argv, expected = CASES[case]
    err = flag_error(registry, capsys, argv)
    assert expected in err, f"{case}: expected {expected!r} in:\n{err}"


def test_phase_attention_backend_that_refuses_the_dtype_names_its_flag(capsys):
    from fakes import attention_plugin, ep

    plugin = attention_plugin("half-only", dtypes=("bfloat16",))
    registry = Registry.discover(entry_points=[ep("h", "pdcore-h", plugin)], env={})
    err = flag_error(registry, capsys, "--dtype float32 --decode-attention-backend half-only")
    assert "--decode-attention-backend: attention backend 'half-only' computes in" in err, err


def test_unavailable_transfer_backend_explains_why(registry, capsys):
    err = flag_error(
        registry, capsys, "--disaggregation-mode decode --disaggregation-transfer-backend ascend"
    )
    assert "not available" in err and "mf_adapter" in err


def test_transfer_backend_is_not_checked_without_pd_mode(registry):
    args = parse(registry, "--disaggregation-transfer-backend ascend")
    assert args.disaggregation_transfer_backend == "ascend"


def test_bad_disaggregation_env_var_is_named(registry, capsys, monkeypatch):
    monkeypatch.setenv("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "soon")
    err = flag_error(registry, capsys, "--disaggregation-mode decode")
    assert "SGLANG_DISAGGREGATION_WAITING_TIMEOUT: expected a number" in err
