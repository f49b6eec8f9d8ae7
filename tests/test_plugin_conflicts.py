"""Names owned by the core or a first-party plugin stay theirs; conflicts and
failed plugins are said wherever a user looks (registry, table, exit code, errors)."""

from __future__ import annotations

import json

import pytest
from fakes import attention_plugin, ep, failing_ep, module_with, transfer_plugin

from pdcore import cli
from pdcore import registry as registry_mod
from pdcore.errors import ConfigError, UnknownBackendError
from pdcore.platform import CpuPlatform
from pdcore.plugins_table import plugin_rows
from pdcore.registry import Registry


class EmuPlatform(CpuPlatform):
    """A third party's CPU-emulated accelerator."""

    name = "emu"
    priority = 10


def discover(*eps):
    return Registry.discover(entry_points=list(eps), env={})


def vendor_torch(platforms=("cpu",)):
    """A third party registering the built-in attention name, eager to be the default."""
    return ep("acme", "acme-attn", attention_plugin("torch", platforms=platforms, priority=100))


def emu_platform():
    return ep("emu", "acme-emu", module_with(pdcore_platforms=lambda: [EmuPlatform()]))


def test_builtin_keeps_its_attention_name_against_a_third_party():
    reg = discover(vendor_torch())
    found = reg.lookup("attention", "torch")
    assert found.provider.plugin == "builtin", (
        f"a plugin took the built-in name 'torch' ({found.provider}); the built-in must keep it"
    )
    default = reg.select_attention(None, reg.get("platform", "cpu"))
    assert default is found.spec, "the third party's priority-100 'torch' became the default"


def test_builtin_keeps_the_cpu_platform_name():
    third_party_cpu = ep("cpu2", "acme-cpu", module_with(pdcore_platforms=lambda: [CpuPlatform()]))
    reg = discover(third_party_cpu)
    assert reg.lookup("platform", "cpu").provider.plugin == "builtin"
    assert reg.select_platform("auto").name == "cpu", "auto must still find the built-in cpu"


def test_conflict_with_builtin_is_a_warning_naming_both_distributions():
    reg = discover(vendor_torch())
    [line] = reg.warnings()
    assert "CONFLICT" in line and "'torch'" in line, line
    assert "pdcore" in line and "(built-in)" in line and "acme-attn 1.0" in line, (
        f"the warning must name both distributions: {line}"
    )
    assert "ignored" in line, f"the warning must say which one is not used: {line}"


def test_first_party_keeps_its_name_and_the_warning_says_how_to_choose_the_other():
    reg = discover(
        ep("acme", "acme-nixl", transfer_plugin("nixl")),
        ep("nixl", "pdcore-transfer-nixl", transfer_plugin("nixl")),
    )
    assert reg.lookup("transfer", "nixl").provider.distribution == "pdcore-transfer-nixl"
    [line] = reg.warnings()
    assert "(first-party)" in line and "acme-nixl 1.0" in line, line
    assert "PDCORE_DISABLE_PLUGINS=pdcore-transfer-nixl" in line, (
        f"a user who wants the third party's nixl needs to know how: {line}"
    )


def test_failed_plugin_is_a_warning_naming_distribution_and_error():
    reg = discover(failing_ep("broken", "acme-broken", ImportError("libacme.so: cannot open")))
    [line] = reg.warnings()
    assert "acme-broken 1.0" in line and "ImportError: libacme.so" in line, line


def test_skipped_plugin_is_no_warning():
    reg = Registry.discover(
        entry_points=[ep("a", "acme-a", transfer_plugin("alpha"))],
        env={"PDCORE_DISABLE_PLUGINS": "acme-a"},
    )
    assert reg.warnings() == [], "a plugin the user disabled is not a problem to warn about"


def test_no_backend_error_names_the_conflict_that_removed_one():
    reg = discover(emu_platform(), vendor_torch(platforms=("emu",)))
    with pytest.raises(ConfigError) as err:
        reg.select_attention(None, reg.get("platform", "emu"))
    msg = str(err.value)
    assert "no MHA attention backend available for 'emu'" in msg, msg
    assert "CONFLICT between pdcore" in msg and "acme-attn 1.0" in msg, (
        f"the only backend for 'emu' was dropped by a conflict; the error must say so: {msg}"
    )


def test_no_backend_error_names_failed_plugins():
    reg = discover(emu_platform(), failing_ep("k", "acme-kernels", ImportError("no libacme")))
    with pytest.raises(ConfigError) as err:
        reg.select_attention(None, reg.get("platform", "emu"))
    assert "acme-kernels 1.0" in str(err.value) and "no libacme" in str(err.value), str(err.value)


def test_explicit_builtin_name_on_another_platform_mentions_the_ignored_plugin():
    reg = discover(emu_platform(), vendor_torch(platforms=("emu",)))
    with pytest.raises(ConfigError) as err:
        reg.select_attention("torch", reg.get("platform", "emu"))
    msg = str(err.value)
    assert "does not run on platform 'emu'" in msg and "acme-attn" in msg, (
        f"the user asked for the plugin's 'torch': say why they got the built-in: {msg}"
    )


def test_unknown_name_error_mentions_conflicts():
    reg = discover(vendor_torch())
    with pytest.raises(UnknownBackendError) as err:
        reg.get("attention", "nope")
    assert "CONFLICT" in str(err.value) and "acme-attn" in str(err.value), str(err.value)


def test_table_shows_the_ignored_entry_as_conflict_and_the_builtin_as_usable():
    rows = [r for r in plugin_rows(discover(vendor_torch())) if r["name"] == "torch"]
    by_provider = {r["provider"].split()[0]: r for r in rows}
    assert by_provider["pdcore"]["available"] == "yes", by_provider
    assert by_provider["acme-attn"]["available"] == "CONFLICT", by_provider
    assert "pdcore" in by_provider["acme-attn"]["detail"], by_provider


@pytest.fixture
def process_registry(monkeypatch):
    """Make ``get_registry()`` return the given registry for one test."""

    def use(reg: Registry) -> Registry:
        monkeypatch.setattr(registry_mod, "_registry", reg)
        return reg

    return use


def test_plugins_command_exits_1_and_lists_a_failed_plugin(process_registry, capsys):
    process_registry(discover(failing_ep("broken", "acme-broken", ImportError("libacme.so"))))
    assert cli.main(["plugins", "--json"]) == 1, "a failed plugin must fail `pdcore plugins`"
    rows = json.loads(capsys.readouterr().out)
    [failed] = [r for r in rows if r["available"] == "FAILED"]
    assert failed["provider"] == "acme-broken 1.0" and "libacme.so" in failed["detail"], failed


def test_plugins_command_reports_a_plugin_whose_flags_hook_fails(process_registry, capsys):
    def bad_flags(parser):
        raise RuntimeError("flag clash")

    process_registry(discover(ep("f", "acme-flags", module_with(pdcore_add_cli_args=bad_flags))))
    assert cli.main(["plugins", "--json"]) == 1, "the server would skip these flags: say so"
    rows = json.loads(capsys.readouterr().out)
    assert any(r["available"] == "FAILED" and "flag clash" in r["detail"] for r in rows), rows


def test_plugins_command_exits_1_on_a_conflict_with_a_builtin(process_registry, capsys):
    process_registry(discover(vendor_torch()))
    assert cli.main(["plugins"]) == 1, "a plugin shadowed by a built-in is a packaging error"
    assert "CONFLICT" in capsys.readouterr().out


def test_plugins_command_reports_a_flag_that_clashes_with_a_server_flag(process_registry, capsys):
    def port_flag(parser):
        parser.add_argument("--port")  # the server's own flag: argparse refuses it

    process_registry(discover(ep("p", "acme-port", module_with(pdcore_add_cli_args=port_flag))))
    assert cli.main(["plugins", "--json"]) == 1, "`pdcore serve` would drop this plugin's flags"
    rows = json.loads(capsys.readouterr().out)
    assert any(r["available"] == "FAILED" and "--port" in r["detail"] for r in rows), rows
