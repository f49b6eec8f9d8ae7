"""Which ``--base-gpu-id`` each server of ``pdcore up`` gets (no GPU needed)."""

from __future__ import annotations

import pytest
from helpers import run_cli

from pdcore.up.args import parse_up_args
from pdcore.up.cluster import server_plan
from pdcore.up.launch import server_command
from pdcore.up.plan import plan_servers


def gpus_of(argv: list[str]) -> dict[str, int | None]:
    return {s.name: s.base_gpu_id for s in server_plan(parse_up_args(["--port", "1", *argv]))}


def test_prefills_then_decodes_get_consecutive_blocks_of_tp_gpus():
    got = gpus_of(["--prefill", "2", "--decode", "2", "--server-args", "--device cuda --tp 2"])
    want = {"prefill-0": 0, "prefill-1": 2, "decode-0": 4, "decode-1": 6}
    assert got == want, "servers must not share GPUs: prefills first, then decodes, tp apart"


def test_one_gpu_servers_are_one_apart_from_base_gpu_id():
    got = gpus_of(["--base-gpu-id", "3", "--", "--device", "cuda"])
    assert got == {"prefill-0": 3, "decode-0": 4}, "1P1D on one GPU each, from --base-gpu-id"


def test_each_role_can_start_at_its_own_gpu():
    argv = ["--decode", "2", "--prefill-base-gpu-id", "4", "--decode-base-gpu-id", "0"]
    got = gpus_of([*argv, "--server-args", "--device cuda"])
    assert got == {"prefill-0": 4, "decode-0": 0, "decode-1": 1}, got


def test_gpu_id_step_widens_a_servers_block():
    plan = plan_servers(1, 1, gpus=True, tp_size=2, gpu_id_step=2)
    assert [s.base_gpu_id for s in plan] == [0, 3], "tp 2 with step 2 uses GPUs 0 and 2"


def test_cpu_servers_get_no_gpu_flag():
    assert gpus_of([]) == {"prefill-0": None, "decode-0": None}, "pdcore up defaults to cpu"
    cmd = server_command(30001, "--device", "cpu", role="decode", gpu=None)
    assert "--base-gpu-id" not in cmd, f"a CPU server must not get --base-gpu-id: {cmd}"


def test_the_planned_gpu_reaches_the_server_command():
    cmd = server_command(30001, "--device", "cuda", role="prefill", gpu=2, bootstrap_port=8998)
    assert cmd[cmd.index("--base-gpu-id") + 1] == "2", cmd
    assert cmd[cmd.index("--disaggregation-bootstrap-port") + 1] == "8998", cmd
    assert cmd[-2:] == ["--device", "cuda"], "the caller's flags come last so they win"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--base-gpu-id", "-1"), "--base-gpu-id: must be >= 0, got -1"),
        (("--decode-base-gpu-id", "-2"), "--decode-base-gpu-id: must be >= 0, got -2"),
        (("--server-args", "--base-gpu-id 1"), "--base-gpu-id is set per server by pdcore up"),
        (("--server-args", "--tp two"), "--tp-size must be a whole number >= 1"),
    ],
)
def test_bad_gpu_flags_are_refused_naming_the_flag(args, message):
    out = run_cli("up", *args)
    assert out.returncode == 2, f"expected a usage error for {args}: {out.stderr}"
    assert message in out.stderr, out.stderr


def test_help_names_the_gpu_flags_and_their_default():
    out = run_cli("up", "--help")
    for flag in ("--base-gpu-id", "--prefill-base-gpu-id", "--decode-base-gpu-id"):
        assert flag in out.stdout, f"`pdcore up --help` does not mention {flag}"
    assert "first GPU of the first server (default 0)" in out.stdout
