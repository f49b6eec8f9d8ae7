"""The pdcore console: plugin table, subcommands, and a third-party plugin's life cycle."""

from __future__ import annotations

import json

import pytest
from helpers import install_example_plugin, run_cli, write_plugin

FIRST_PARTY = {
    ("platform", "cuda"): "pdcore-cuda",
    ("platform", "npu"): "pdcore-ascend",
    ("transfer", "mooncake"): "pdcore-transfer-mooncake",
    ("transfer", "nixl"): "pdcore-transfer-nixl",
    ("transfer", "ascend"): "pdcore-transfer-ascend",
}


@pytest.fixture(scope="module")
def plugin_rows():
    out = run_cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    return {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}


@pytest.mark.parametrize(("key", "dist"), FIRST_PARTY.items())
def test_plugins_lists_first_party_backend(plugin_rows, key, dist):
    assert key in plugin_rows, f"{key} missing from `pdcore plugins`"
    assert plugin_rows[key]["provider"].startswith(dist + " ")


def test_plugins_is_honest_about_this_cpu_machine(plugin_rows):
    assert plugin_rows[("platform", "cpu")]["available"] == "yes"
    cuda = plugin_rows[("platform", "cuda")]
    assert cuda["available"] == "no" and "CUDA" in cuda["detail"]
    npu = plugin_rows[("platform", "npu")]
    assert npu["available"] == "no" and "torch_npu" in npu["detail"]
    ascend = plugin_rows[("transfer", "ascend")]
    assert ascend["available"] == "no" and "mf_adapter" in ascend["detail"]
    for name in ("mooncake", "nixl"):
        row = plugin_rows[("transfer", name)]
        assert row["available"] == "yes", f"{name} should run on this CPU machine: {row}"


def test_plugins_table_has_headers_and_rows():
    out = run_cli("plugins")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["KIND", "NAME", "PROVIDED", "BY"]
    assert any(r.startswith("platform") and " cpu " in r for r in rows)


def test_unknown_subcommand_lists_choices():
    out = run_cli("serv")
    assert out.returncode == 2
    assert "choose one of: serve, router, up, bench, plugins" in out.stderr


def test_launch_server_module_and_serve_share_flags():
    out = run_cli("serve", "--node-rank", "2", "--nnodes", "2", "--dist-init-addr", "h:1")
    assert out.returncode == 2
    assert "--node-rank: 2 is out of range for --nnodes 2" in out.stderr


def test_check_config_prints_resolved_backends():
    out = run_cli(
        "serve",
        "--check-config",
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-transfer-backend",
        "nixl",
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["device"] == "cpu" and cfg["attention_backend"] == "torch"
    assert cfg["disaggregation_env"]["bootstrap_timeout"] == 300.0


def test_failed_plugin_fails_plugins_command_and_is_warned_by_check_config(tmp_path):
    site = tmp_path / "site"
    import_error = "raise ImportError('libacme.so: no such file')\n"
    write_plugin(site, "acme-broken", "acme_broken", import_error)
    env = {"PYTHONPATH": str(site)}
    out = run_cli("plugins", env=env)
    assert out.returncode == 1, f"a failed plugin must make `pdcore plugins` fail: {out.stdout}"
    assert any("acme-broken 1.0" in r and "FAILED" in r for r in out.stdout.splitlines())
    out = run_cli("serve", "--check-config", env=env)
    assert out.returncode == 0, out.stderr
    assert "pdcore: warning: plugin acme-broken 1.0" in out.stderr, out.stderr
    warnings = json.loads(out.stdout)["plugin_warnings"]
    assert len(warnings) == 1 and "ImportError: libacme.so" in warnings[0], warnings


def test_unknown_decode_attention_backend_names_the_flag():
    out = run_cli("serve", "--check-config", "--decode-attention-backend", "nope")
    assert out.returncode == 2, out.stderr
    assert "--decode-attention-backend" in out.stderr and "nope" in out.stderr, out.stderr


def test_router_accepts_sglang_pd_command():
    out = run_cli(
        "router",
        "--pd-disaggregation",
        "--prefill",
        "http://127.0.0.1:30000",
        "--decode",
        "http://127.0.0.1:30001",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--check-config",
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["prefill"][0]["url"] == "http://127.0.0.1:30000"
    assert cfg["decode"][0]["url"] == "http://127.0.0.1:30001"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--pd-disaggregation", "--decode", "http://h:1"], "--prefill: --pd-disaggregation"),
        (["--pd-disaggregation", "--prefill", "http://h:1"], "--decode: --pd-disaggregation"),
        (
            ["--pd-disaggregation", "--prefill", "h:1", "--decode", "http://h:2"],
            "--prefill: expected an http(s)://HOST:PORT URL",
        ),
        (
            ["--pd-disaggregation", "--prefill", "http://h:1", "x", "--decode", "http://h:2"],
            "--prefill: bootstrap port must be 1..65535",
        ),
        (["--policy", "fastest"], "--policy"),
    ],
)
def test_router_flag_errors_name_the_flag(argv, expected):
    out = run_cli("router", *argv)
    assert out.returncode == 2 and expected in out.stderr, out.stderr


class TestThirdPartyPlugin:
    """Install the example plugin, use it by name, then uninstall/block it."""

    def test_installed_plugin_shows_in_table(self, example_plugin_site):
        out = run_cli("plugins", "--json")
        rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
        assert rows[("transfer", "example-tcp")]["provider"] == "pdcore-example-plugin 0.1.0"
        assert rows[("attention", "example-matmul")]["available"] == "yes"

    def test_selected_by_name_through_the_cli(self, example_plugin_site):
        out = run_cli(
            "serve",
            "--check-config",
            "--disaggregation-mode",
            "decode",
            "--disaggregation-transfer-backend",
            "example-tcp",
            "--attention-backend",
            "example-matmul",
            "--example-tcp-timeout",
            "3",
        )
        assert out.returncode == 0, out.stderr
        cfg = json.loads(out.stdout)
        assert cfg["disaggregation_transfer_backend"] == "example-tcp"
        assert cfg["attention_backend"] == "example-matmul"
        assert cfg["plugin_args"] == {"example_tcp_timeout": 3.0}

    def test_prefill_and_decode_backends_chosen_apart(self, example_plugin_site):
        out = run_cli("serve", "--check-config", "--prefill-attention-backend", "example-matmul")
        assert out.returncode == 0, out.stderr
        cfg = json.loads(out.stdout)
        assert cfg["attention_backend"] == "example-matmul+torch", cfg["attention_backend"]
        assert cfg["prefill_attention_backend"] == "example-matmul"
        assert cfg["decode_attention_backend"] == "torch"

    def test_plugin_flag_is_validated_by_the_plugin(self, example_plugin_site):
        out = run_cli("serve", "--example-tcp-timeout", "0")
        assert out.returncode == 2
        assert "--example-tcp-timeout: must be positive" in out.stderr

    def test_blocked_plugin_gives_clean_error(self, example_plugin_site):
        out = run_cli(
            "serve",
            "--disaggregation-mode",
            "decode",
            "--disaggregation-transfer-backend",
            "example-tcp",
            env={"PDCORE_DISABLE_PLUGINS": "pdcore-example-plugin"},
        )
        assert out.returncode == 2
        assert "Unknown transfer backend 'example-tcp'. Choose one of:" in out.stderr
        assert "listed in PDCORE_DISABLE_PLUGINS" in out.stderr
        assert "Traceback" not in out.stderr

    def test_uninstalled_plugin_gives_clean_error(self, example_plugin_site, tmp_path):
        site = tmp_path / "site"
        install_example_plugin(site)
        env = {"PYTHONPATH": str(site)}
        assert "example-tcp" in run_cli("plugins", env=env).stdout
        uninstall_from(site, "pdcore_example_plugin")
        assert "example-tcp" not in run_cli("plugins", env=env).stdout
        out = run_cli(
            "serve",
            "--disaggregation-mode",
            "decode",
            "--disaggregation-transfer-backend",
            "example-tcp",
            env=env,
        )
        assert out.returncode == 2
        assert (
            "--disaggregation-transfer-backend: Unknown transfer backend 'example-tcp'"
            in out.stderr
        )
        assert "Traceback" not in out.stderr


def uninstall_from(site, dist_dir_prefix: str) -> None:
    """Remove every file a distribution's RECORD lists, as ``pip uninstall`` does."""
    [info] = site.glob(f"{dist_dir_prefix}-*.dist-info")
    for line in (info / "RECORD").read_text().splitlines():
        path = site / line.split(",")[0]
        if path.is_file():
            path.unlink()
    assert not list(site.glob(f"{dist_dir_prefix}-*.dist-info/METADATA"))


@pytest.mark.parametrize("name", ["mooncake", "nixl"])
def test_plugins_says_mooncake_and_nixl_data_planes_are_unauthenticated(plugin_rows, name):
    row = plugin_rows[("transfer", name)]
    assert row["data_plane_authenticated"] is False, row
    assert "data plane unauthenticated: keep on a private network" in row["detail"], (
        f"{name} accepts any peer whatever --disaggregation-secret; the table must say so: {row}"
    )
