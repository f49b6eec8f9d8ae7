"""A PD server started with a secret warns that the transfer engine's data plane
is not covered by it (Mooncake: any peer that reaches its ports may write KV)."""

from __future__ import annotations

import logging

import pytest
from disaggregation.pd_peer import ENV, MODEL, SHAPE, make_pool

from pdcore.disaggregation.kv_args import KVArgs
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.envs import DisaggregationEnv

WARNING = "authenticates the PD control plane only"


def start_decode(secret):
    pool = make_pool(SHAPE)
    return KVManager(
        "decode",
        KVArgs.from_pool(pool, MODEL),
        "mooncake",
        env=DisaggregationEnv(**ENV),
        secret=secret,
    )


@pytest.mark.parametrize(("secret", "warnings"), [("s3cret-value", 1), (None, 0)])
def test_a_secret_with_an_unauthenticated_engine_warns_once_at_start(caplog, secret, warnings):
    caplog.set_level(logging.WARNING, logger="pdcore.disaggregation.kv_manager")
    manager = start_decode(secret)
    manager.close()
    said = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(said) == warnings, f"expected {warnings} data-plane warning(s), got {said}"
    if said:
        assert "mooncake" in said[0] and "private network" in said[0], said[0]
        assert "s3cret-value" not in caplog.text, "the secret was logged"
