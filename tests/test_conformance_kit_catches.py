"""The conformance kit fails deliberately broken backends (it can fail at all)."""

from __future__ import annotations

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
