"""Plugin options: a plugin's own flags (or their PDCORE_/SGLANG_ variables) become
``ServerArgs.plugin_options``, which the factories of that plugin's backends receive.

In-process: the front end's parsing and the engine side's lookups. That the values
cross into spawned engine processes and TP ranks is tested in
``tests/parallel/test_plugin_options_tp.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fakes import ep, module_with

from pdcore import registry as registry_mod
from pdcore.attention.base import AttentionBackend, AttentionConfig
from pdcore.config import ServerArgs
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.engine.engine import _attention_factories
from pdcore.hookspecs import Availability
from pdcore.launch_server import parse_server_args
from pdcore.platform import CpuPlatform
from pdcore.registry import Registry

KEY = "pdcore-fake-vendor:vendor"
SEEN: dict[str, AttentionConfig] = {}


class VendorPlatform(CpuPlatform):
    name = "vendor-cpu"
    priority = -1  # never chosen by --device auto


def vendor_plugin(configure=None, add_args=None):
    """A third-party plugin with a transfer engine, an attention backend, a platform
    and two flags of its own."""

    def pdcore_add_cli_args(parser):
        parser.add_argument("--vendor-queue-depth", type=int, default=8, help="queue depth")
        parser.add_argument("--vendor-fast-path", action="store_true", help="use it")
        if add_args:
            add_args(parser)

    def pdcore_attention_backends():
        def factory(cfg):
            SEEN["vendor-attn"] = cfg
            return object()

        return [AttentionBackend(name="vendor-attn", factory=factory, platforms=("cpu",))]

    hooks = dict(
        pdcore_add_cli_args=pdcore_add_cli_args,
        pdcore_transfer_backends=lambda: [
            TransferBackend(name="vendor-xfer", factory=lambda c: c, check=Availability.yes)
        ],
        pdcore_attention_backends=pdcore_attention_backends,
        pdcore_platforms=lambda: [VendorPlatform()],
    )
    if configure:
        hooks["pdcore_configure"] = configure
    return module_with(**hooks)


def registry_with(module) -> Registry:
    return Registry.discover(entry_points=[ep("vendor", "pdcore-fake-vendor", module)], env={})


def parse(registry, *argv, env=None, monkeypatch=None) -> ServerArgs:
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    args, _ = parse_server_args(list(argv), registry)
    return args


def test_a_plugins_flags_become_its_options(monkeypatch):
    reg = registry_with(vendor_plugin())
    args = parse(reg, "--vendor-queue-depth", "32", "--vendor-fast-path")
    assert args.plugin_options == {KEY: {"vendor_queue_depth": 32, "vendor_fast_path": True}}, (
        "a plugin's options are exactly the flags it declared, keyed by the plugin"
    )


def test_options_keep_their_defaults_when_no_flag_is_given():
    args = parse(registry_with(vendor_plugin()))
    assert args.plugin_options[KEY] == {"vendor_queue_depth": 8, "vendor_fast_path": False}


@pytest.mark.parametrize("prefix", ["PDCORE_", "SGLANG_"])
def test_the_environment_form_sets_an_option(monkeypatch, prefix):
    env = {f"{prefix}VENDOR_QUEUE_DEPTH": "16", f"{prefix}VENDOR_FAST_PATH": "true"}
    args = parse(registry_with(vendor_plugin()), env=env, monkeypatch=monkeypatch)
    assert args.plugin_options[KEY] == {"vendor_queue_depth": 16, "vendor_fast_path": True}, (
        f"{prefix}<FLAG> must set a plugin option as SGLang-style variables do"
    )


def test_pdcore_spelling_wins_and_a_flag_beats_both(monkeypatch):
    env = {"PDCORE_VENDOR_QUEUE_DEPTH": "16", "SGLANG_VENDOR_QUEUE_DEPTH": "4"}
    reg = registry_with(vendor_plugin())
    args = parse(reg, env=env, monkeypatch=monkeypatch)
    assert args.plugin_options[KEY]["vendor_queue_depth"] == 16, "PDCORE_ wins over SGLANG_"
    args = parse(reg, "--vendor-queue-depth", "2", env=env, monkeypatch=monkeypatch)
    assert args.plugin_options[KEY]["vendor_queue_depth"] == 2, "the command line wins"


def test_a_bad_environment_value_names_the_variable_and_the_flag(monkeypatch, capsys):
    monkeypatch.setenv("PDCORE_VENDOR_QUEUE_DEPTH", "deep")
    with pytest.raises(SystemExit) as exit_:
        parse(registry_with(vendor_plugin()))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, "a bad value is a usage error"
    assert "PDCORE_VENDOR_QUEUE_DEPTH" in err and "--vendor-queue-depth" in err, err


def test_an_unknown_plugin_flag_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit):
        parse(registry_with(vendor_plugin()), "--vendor-queue-size", "3")
    err = capsys.readouterr().err
    assert "--vendor-queue-size" in err, f"the misspelt flag must be named: {err}"


def test_configure_normalizes_the_options_the_factories_get():
    def configure(args):
        return {"vendor_queue_depth": args.vendor_queue_depth * 2}

    args = parse(registry_with(vendor_plugin(configure=configure)), "--vendor-queue-depth", "3")
    assert args.plugin_options[KEY]["vendor_queue_depth"] == 6, (
        "what pdcore_configure returns replaces the parsed value"
    )


def test_configure_cannot_add_options_it_did_not_declare(capsys):
    def configure(args):
        return {"model_path": args.model_path}

    with pytest.raises(SystemExit):
        parse(registry_with(vendor_plugin(configure=configure)))
    err = capsys.readouterr().err
    assert "pdcore_configure" in err and "vendor_queue_depth" in err, (
        f"a plugin's options are only those it declared; the error must list them: {err}"
    )


def test_a_value_that_is_not_plain_data_names_the_flag(capsys):
    def add_args(parser):
        parser.add_argument("--vendor-dir", type=Path, default=Path("/tmp"))

    with pytest.raises(SystemExit):
        parse(registry_with(vendor_plugin(add_args=add_args)))
    err = capsys.readouterr().err
    assert "--vendor-dir" in err and "str, int, float, bool" in err, (
        f"options travel to engine processes as plain data; the error must say so: {err}"
    )


def test_help_names_the_environment_form():
    from pdcore.launch_server import build_parser

    text = build_parser(registry_with(vendor_plugin()), "pdcore serve").format_help()
    assert "PDCORE_VENDOR_QUEUE_DEPTH" in text and "SGLANG_VENDOR_QUEUE_DEPTH" in text, text


def test_server_args_with_options_stay_plain_data():
    import msgspec

    args = parse(registry_with(vendor_plugin()), "--vendor-fast-path")
    wire = msgspec.msgpack.encode(dataclasses.asdict(args))
    again = ServerArgs(**msgspec.msgpack.decode(wire))
    assert again.plugin_options == args.plugin_options, "engine processes must get the same"


# ---- the engine side: each factory gets its own plugin's options only ---------------


@pytest.fixture
def vendor_registry(monkeypatch):
    reg = registry_with(vendor_plugin())
    monkeypatch.setattr(registry_mod, "_registry", reg)
    return reg


def test_the_transfer_engine_gets_its_plugins_options_and_pdcores(vendor_registry, monkeypatch):
    from pdcore.engine.pd import transfer_options

    monkeypatch.setenv("SGLANG_DISAGGREGATION_WRITE_TIMEOUT", "2.5")
    args = parse(vendor_registry, "--vendor-queue-depth", "5")
    args.disaggregation_transfer_backend = "vendor-xfer"
    assert transfer_options(args) == {
        "transfer_timeout_s": 2.5,
        "vendor_queue_depth": 5,
        "vendor_fast_path": False,
    }, "TransferConfig.options: pdcore's keys, then the plugin's own options, nothing else"


def test_transfer_timeout_defaults_to_30s(vendor_registry, monkeypatch):
    from pdcore.engine.pd import transfer_options

    for var in ("PDCORE_DISAGGREGATION_WRITE_TIMEOUT", "SGLANG_DISAGGREGATION_WRITE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    args = parse(vendor_registry)
    args.disaggregation_transfer_backend = "vendor-xfer"
    assert transfer_options(args)["transfer_timeout_s"] == 30.0


def test_another_plugins_backend_gets_none_of_them(vendor_registry):
    args = parse(vendor_registry, "--vendor-queue-depth", "5")
    assert vendor_registry.options_for("attention", "torch", args.plugin_options) == {}, (
        "a built-in backend must not see a third-party plugin's options"
    )


def test_the_attention_factory_gets_its_plugins_options(vendor_registry):
    args = parse(vendor_registry, "--vendor-queue-depth", "7", "--attention-backend", "vendor-attn")
    config = AttentionConfig(2, 1, 8, 16)
    names, prefill, _ = _attention_factories(None, args, CpuPlatform(), config)
    prefill(config)
    assert names == ("vendor-attn", "vendor-attn")
    assert SEEN["vendor-attn"].options == {"vendor_queue_depth": 7, "vendor_fast_path": False}, (
        "AttentionConfig.options must hold the attention plugin's options"
    )


def test_the_platform_is_configured_with_its_plugins_options(vendor_registry):
    from pdcore.engine.engine_process import configured_platform

    args = parse(vendor_registry, "--vendor-fast-path")
    args.device = "vendor-cpu"
    platform = configured_platform(args)
    assert platform.name == "vendor-cpu"
    assert platform.options == {"vendor_queue_depth": 8, "vendor_fast_path": True}, (
        "Platform.options must hold the platform plugin's options in the engine process"
    )
