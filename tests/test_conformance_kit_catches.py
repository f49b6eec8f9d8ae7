"""The conformance kit fails deliberately broken backends (it can fail at all)."""

from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree

import pytest

SUITE_FILE = """
from pdcore.testing import {suite}

class TestBroken({suite}):
    backend_name = "{name}"
    factory_path = "broken_backends:{factory}"
    dead_peer_timeout_s = 10.0
"""


def run_suite(pytester, suite, name, factory, select):
    pytester.makepyfile(test_broken=SUITE_FILE.format(suite=suite, name=name, factory=factory))
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-k", select, timeout=240)


@pytest.fixture
def kit(pytester, example_plugin_site):
    return pytester


def test_truncating_transfer_engine_fails_byte_check(kit):
    result = run_suite(
        kit, "TransferBackendSuite", "example-tcp", "TruncatingEngine", "single_page or scattered"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*bytes differ from what was written*"])


def test_lying_transfer_engine_fails_data_and_dead_peer_checks(kit):
    result = run_suite(
        kit, "TransferBackendSuite", "example-tcp", "LyingEngine", "single_page or dead_peer"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*reported success*"])


# One kit run for the contract checks: a class per broken engine, each run on the
# check that must catch it (one subprocess keeps this file quick).
CONTRACT_CASES = {  # broken engine -> the kit check that must fail it
    "NotifiesBeforeDataEngine": "test_notification_shows_only_after_all_its_bytes",
    "SharedSocketEngine": "test_writes_from_several_threads_to_one_peer_all_land",
    "DuplicatingNotificationsEngine": "test_each_notification_is_delivered_once",
    "LeakyCloseEngine": "test_close_leaves_no_threads_or_descriptors",
    "IgnoresRefusalEngine": "test_write_into_deregistered_peer_memory_fails",
    "WaitsForLostPeerEngine": "test_peer_killed_mid_transfer_ends_within_deadline",
    "NoDeadlineEngine": "test_hung_peer_ends_within_deadline",
}
CONTRACT_CLASS = """
class Test{factory}(TransferBackendSuite):
    backend_name = "example-tcp"
    factory_path = "broken_backends:{factory}"
    transfer_deadline_s = 2.0
    deadline_grace_s = 3.0
"""


@pytest.fixture(scope="module")
def contract_failures(tmp_path_factory, example_plugin_site) -> dict[str, str]:
    """Run each broken engine's class on its check; {engine: failure text} for failures."""
    folder = tmp_path_factory.mktemp("contract-kit")
    body = "from pdcore.testing import TransferBackendSuite\n" + "".join(
        CONTRACT_CLASS.format(factory=f) for f in CONTRACT_CASES
    )
    (folder / "test_broken_contract.py").write_text(body)
    select = " or ".join(f"(Test{f} and {t})" for f, t in CONTRACT_CASES.items())
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select]
    cmd += ["--junitxml", str(folder / "report.xml"), "test_broken_contract.py"]
    subprocess.run(cmd, cwd=folder, timeout=300, capture_output=True, check=False)
    report = ElementTree.parse(folder / "report.xml")
    failures = {}
    for case in report.iter("testcase"):
        engine = case.get("classname").rsplit(".Test", 1)[-1]
        for failure in case.iter("failure"):
            failures[engine] = (failure.get("message") or "") + (failure.text or "")
    ran = {case.get("classname").rsplit(".Test", 1)[-1] for case in report.iter("testcase")}
    assert ran == set(CONTRACT_CASES), f"the kit did not run every case: ran {sorted(ran)}"
    return failures


@pytest.mark.parametrize(
    "engine, expected",
    [
        ("NotifiesBeforeDataEngine", "before all the bytes it announces"),
        ("SharedSocketEngine", "concurrent writes to one peer failed"),
        ("DuplicatingNotificationsEngine", "was delivered"),
        ("LeakyCloseEngine", "still running"),
        ("IgnoresRefusalEngine", "deregistered reported success"),
        ("WaitsForLostPeerEngine", "died mid-transfer never ended"),
        ("NoDeadlineEngine", "not ended by the engine's deadline"),
    ],
)
def test_contract_check_fails_broken_transfer_engine(contract_failures, engine, expected):
    assert engine in contract_failures, (
        f"{CONTRACT_CASES[engine]} passed {engine}: the kit misses that bug"
    )
    assert expected in contract_failures[engine], contract_failures[engine][:2000]


def test_attention_returning_float32_for_bf16_fails_dtype_check(kit):
    result = run_suite(
        kit, "AttentionBackendSuite", "torch", "Float32OutputAttention", "output_dtype"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*bfloat16 inputs gave a torch.float32 output*"])


def test_attention_without_causal_mask_fails_numerics(kit):
    result = run_suite(
        kit,
        "AttentionBackendSuite",
        "torch",
        "NoCausalMaskAttention",
        "matches_dense_reference and prefill",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 4, f"kit missed a non-causal backend: {outcomes}"


def test_attention_that_skips_cache_write_fails_store_check(kit):
    result = run_suite(
        kit, "AttentionBackendSuite", "torch", "ForgetsToStoreAttention", "stored_in_their_slots"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*not at cache_slots*"])
