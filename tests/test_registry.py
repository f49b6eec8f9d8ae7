"""Registry behaviour: discovery, isolation, conflicts, unknown names, filters."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fakes import attention_plugin, ep, failing_ep, module_with, transfer_plugin

from pdcore import registry as registry_mod
from pdcore.errors import (
    BackendUnavailableError,
    ConfigError,
    DuplicateBackendError,
    UnknownBackendError,
)
from pdcore.registry import Registry

FIRST_PARTY_BACKENDS = {
    ("platform", "cuda"): "pdcore-cuda",
    ("platform", "npu"): "pdcore-ascend",
    ("transfer", "mooncake"): "pdcore-transfer-mooncake",
    ("transfer", "nixl"): "pdcore-transfer-nixl",
    ("transfer", "ascend"): "pdcore-transfer-ascend",
}


def discover(*eps, env=None):
    return Registry.discover(entry_points=list(eps), env=env or {})


def test_builtins_register_through_hooks():
    reg = discover()
    assert reg.lookup("platform", "cpu").provider.distribution == "pdcore"
    assert reg.lookup("attention", "torch").provider.plugin == "builtin"


@pytest.mark.parametrize(("kind_name", "dist"), FIRST_PARTY_BACKENDS.items())
def test_first_party_plugins_are_discovered_from_entry_points(kind_name, dist):
    reg = Registry.discover(env={})
    kind, name = kind_name
    found = reg.lookup(kind, name)
    assert found.provider.distribution == dist, f"{name} provided by {found.provider}"


def test_entry_point_import_failure_is_recorded_not_fatal():
    reg = discover(
        failing_ep("broken", "pdcore-broken", ImportError("libfoo.so: cannot open")),
        ep("good", "pdcore-good", transfer_plugin("good")),
    )
    assert reg.get("transfer", "good") is not None, "a broken plugin took the good one down"
    [problem] = reg.problems
    assert problem.stage == "load"
    assert problem.provider.distribution == "pdcore-broken"
    assert "libfoo.so" in problem.message


def test_hook_raising_is_recorded_and_other_hooks_still_register():
    def bad():
        raise RuntimeError("boom")

    module = module_with(
        pdcore_transfer_backends=bad,
        pdcore_attention_backends=attention_plugin("fine").pdcore_attention_backends,
    )
    reg = discover(ep("mixed", "pdcore-mixed", module))
    assert "fine" in reg.names("attention")
    [problem] = reg.problems
    assert problem.stage == "pdcore_transfer_backends" and "boom" in problem.message


def test_hook_returning_wrong_type_is_recorded():
    module = module_with(pdcore_transfer_backends=lambda: ["not a TransferBackend"])
    reg = discover(ep("wrong", "pdcore-wrong", module))
    assert reg.names("transfer") == []
    assert "must return TransferBackend" in reg.problems[0].message


def test_invalid_backend_name_is_recorded():
    reg = discover(ep("caps", "pdcore-caps", transfer_plugin("Bad Name")))
    assert "invalid transfer name" in reg.problems[0].message


def test_duplicate_name_error_names_both_distributions():
    reg = discover(
        ep("one", "pdcore-one", transfer_plugin("fast")),
        ep("two", "pdcore-two", transfer_plugin("fast")),
    )
    with pytest.raises(DuplicateBackendError) as err:
        reg.get("transfer", "fast")
    assert "pdcore-one 1.0" in str(err.value) and "pdcore-two 1.0" in str(err.value)
    assert ("transfer", "fast") in reg.conflicts()


def test_same_entry_point_seen_twice_loads_once():
    first = ep("dup", "pdcore-dup", transfer_plugin("dup"))
    second = ep("dup", "pdcore-dup", transfer_plugin("dup"))
    reg = discover(first, second)
    assert reg.get("transfer", "dup") is not None, "one distribution seen twice is no conflict"
    assert first.loads + second.loads == 1


def test_unknown_name_lists_choices():
    reg = discover(ep("a", "pdcore-a", transfer_plugin("alpha", "beta")))
    with pytest.raises(UnknownBackendError, match=r"Choose one of: alpha, beta\."):
        reg.get("transfer", "gamma")


def test_unknown_first_party_name_gives_install_hint(monkeypatch):
    monkeypatch.setattr(registry_mod, "_installed", lambda dist: None)
    reg = discover()
    with pytest.raises(UnknownBackendError) as err:
        reg.get("transfer", "nixl")
    assert "pip install 'pdcore[nixl]'" in str(err.value)
    with pytest.raises(UnknownBackendError, match=r"pdcore\[ascend-transfer\]"):
        reg.get("transfer", "ascend")
    with pytest.raises(UnknownBackendError, match=r"pdcore\[cuda\]"):
        reg.get("attention", "flashinfer")


def test_allow_list_loads_only_named_plugins():
    reg = discover(
        ep("a", "pdcore-a", transfer_plugin("alpha")),
        ep("b", "pdcore-b", transfer_plugin("beta")),
        env={"PDCORE_PLUGINS": "pdcore-a"},
    )
    assert reg.names("transfer") == ["alpha"]
    assert "cpu" in reg.names("platform"), "built-ins are always loaded"
    assert any("not in PDCORE_PLUGINS" in p.message for p in reg.problems)


def test_block_list_by_entry_point_name_and_error_says_why():
    reg = discover(
        ep("a", "pdcore-a", transfer_plugin("alpha")),
        ep("b", "pdcore-b", transfer_plugin("beta")),
        env={"PDCORE_DISABLE_PLUGINS": " b , other"},
    )
    assert reg.names("transfer") == ["alpha"]
    with pytest.raises(UnknownBackendError, match="listed in PDCORE_DISABLE_PLUGINS"):
        reg.get("transfer", "beta")


def test_blocked_first_party_plugin_is_named_in_error():
    reg = Registry.discover(env={"PDCORE_DISABLE_PLUGINS": "pdcore-transfer-nixl"})
    with pytest.raises(UnknownBackendError) as err:
        reg.get("transfer", "nixl")
    assert "pdcore-transfer-nixl" in str(err.value) and "was skipped" in str(err.value)


def test_require_unavailable_backend_names_flag_and_reason():
    reg = discover(ep("a", "pdcore-a", transfer_plugin("nolib", ok=False)))
    with pytest.raises(BackendUnavailableError, match="no lib"):
        reg.require("transfer", "nolib")
    with pytest.raises(ConfigError) as err:
        reg.require("transfer", "nolib", "--disaggregation-transfer-backend")
    assert err.value.flag == "--disaggregation-transfer-backend"


def test_availability_check_that_raises_is_reported_not_fatal():
    def boom():
        raise OSError("driver exploded")

    module = module_with(
        pdcore_transfer_backends=lambda: [
            registry_mod.TransferBackend(name="x", factory=lambda c: None, check=boom)
        ]
    )
    reg = discover(ep("x", "pdcore-x", module))
    avail = reg.availability(reg.lookup("transfer", "x"))
    assert not avail.ok and "driver exploded" in avail.reason


def test_attention_needs_an_available_platform():
    reg = discover(ep("k", "pdcore-k", attention_plugin("gpu-only", platforms=("cuda",))))
    avail = reg.availability(reg.lookup("attention", "gpu-only"))
    assert not avail.ok and "needs platform cuda" in avail.reason


def test_auto_platform_is_cpu_without_accelerators():
    assert Registry.discover(env={}).select_platform("auto").name == "cpu"


def test_process_registry_is_discovered_once():
    registry_mod.reset_registry()
    try:
        assert registry_mod.get_registry() is registry_mod.get_registry()
    finally:
        registry_mod.reset_registry()


def test_discovery_imports_no_heavy_library():
    code = (
        "import sys; from pdcore.registry import Registry; r = Registry.discover(); "
        "assert len(r.all()) > 2; "
        "heavy = ['torch', 'torch_npu', 'flashinfer', 'mooncake', 'nixl', 'mf_adapter', "
        "'triton']; print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", f"discovery imported: {out.stdout}"


def test_default_attention_prefers_builtin_on_equal_priority():
    reg = discover(ep("k", "pdcore-k", attention_plugin("aaa-first-by-name")))
    assert reg.select_attention(None, reg.get("platform", "cpu")).name == "torch"
