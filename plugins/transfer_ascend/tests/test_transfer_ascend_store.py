"""The memfabric config store is created by prefill node 0, through ``pdcore_configure``,
as SGLang's prefill server does; every other server only connects to it."""

from __future__ import annotations

import argparse

import pytest

from pdcore.config import ConfigError
from pdcore.registry import Registry


def server(mode="prefill", node_rank=0, backend="ascend") -> argparse.Namespace:
    return argparse.Namespace(
        disaggregation_mode=mode, node_rank=node_rank, disaggregation_transfer_backend=backend
    )


def configure(args) -> None:
    """Through the registry, as ``ServerArgs.validate`` runs every plugin's hook."""
    Registry.discover(env={}).configure(args)


def test_prefill_node_0_creates_the_store_at_the_url(mf):
    configure(server())
    assert mf.calls == [("create_config_store", mf.STORE_URL)]


@pytest.mark.parametrize(
    "args",
    [server(mode="decode"), server(node_rank=1), server(backend="mooncake"), server(mode="null")],
    ids=["decode", "prefill-node-1", "other-backend", "null-mode"],
)
def test_other_servers_do_not_create_it(mf, args):
    configure(args)
    assert mf.calls == []


def test_the_mooncake_switch_needs_no_store(mf, monkeypatch):
    monkeypatch.setenv("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE", "true")
    configure(server())
    assert mf.calls == []


def test_an_external_store_can_be_kept(mf, monkeypatch):
    monkeypatch.setenv("PDCORE_ASCEND_MF_CREATE_STORE", "false")
    configure(server())
    assert mf.calls == []


def test_a_failed_creation_names_the_flag_the_code_and_the_way_out(mf):
    mf.codes["create_config_store"] = -1
    with pytest.raises(ConfigError) as err:
        configure(server())
    assert err.value.flag == "--disaggregation-transfer-backend"
    assert f"create_config_store('{mf.STORE_URL}') failed with return code -1" in str(err.value)
    assert "PDCORE_ASCEND_MF_CREATE_STORE=false" in str(err.value)


def test_a_missing_url_is_a_config_error(mf, monkeypatch):
    monkeypatch.delenv("ASCEND_MF_STORE_URL")
    with pytest.raises(ConfigError, match="ASCEND_MF_STORE_URL is not set"):
        configure(server())
    assert mf.calls == []
