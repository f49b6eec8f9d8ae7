"""``KVManager(role, ...)`` builds the manager of that role, holding only its state.

The engine, the tests and the fuzzers all construct managers this one way; what
they get is a ``PrefillKVManager`` (senders, chunk queue) or a
``DecodeKVManager`` (receivers, notices, unsettled rooms), and both report the
same metrics keys so the exporter needs no role switch.
"""

from __future__ import annotations

import pytest
from disaggregation.pd_peer import ENV, MODEL, SHAPE, make_pool

from pdcore.disaggregation.decode_manager import DecodeKVManager
from pdcore.disaggregation.kv_args import KVArgs
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.prefill_manager import PrefillKVManager
from pdcore.envs import DisaggregationEnv


def start(role: str) -> KVManager:
    args = KVArgs.from_pool(make_pool(SHAPE), MODEL)
    return KVManager(role, args, "mooncake", env=DisaggregationEnv(**ENV))


@pytest.fixture(scope="module")
def managers():
    built = {role: start(role) for role in ("prefill", "decode")}
    yield built
    for mgr in built.values():
        mgr.close()


@pytest.mark.parametrize(
    ("role", "kind", "own", "other"),
    [
        ("prefill", PrefillKVManager, "sender", "receiver"),
        ("decode", DecodeKVManager, "receiver", "sender"),
    ],
)
def test_the_factory_builds_the_manager_of_the_role(managers, role, kind, own, other):
    mgr = managers[role]
    assert type(mgr) is kind, f"KVManager({role!r}, ...) built {type(mgr).__name__}"
    assert mgr.role == role
    assert callable(getattr(mgr, own, None)), f"a {role} manager opens rooms with {own}()"
    assert not hasattr(mgr, other), f"a {role} manager must not offer the other side's {other}()"


def test_both_roles_report_the_same_metrics_keys(managers):
    prefill, decode = managers["prefill"].stats(), managers["decode"].stats()
    assert list(prefill) == list(decode), (
        "the metrics exporter reads one set of keys from either side: "
        f"prefill has {sorted(set(prefill) ^ set(decode))} that decode lacks, or back"
    )


def test_an_unknown_role_is_refused_by_name():
    with pytest.raises(ValueError, match="role must be 'prefill' or 'decode', got 'both'"):
        start("both")
