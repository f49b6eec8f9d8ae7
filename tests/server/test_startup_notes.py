"""Start-up log lines: the fake transfer backend warns that outputs are not real;
--trust-remote-code says it changes nothing; failed plugins and name conflicts warn."""

from __future__ import annotations

import logging

from fakes import attention_plugin, ep, failing_ep

from pdcore.config import ServerArgs
from pdcore.registry import Registry
from pdcore.server.startup_notes import (
    FAKE_BACKEND_WARNING,
    TRUST_REMOTE_CODE_NOTE,
    log_flag_notes,
    log_plugin_notes,
)


def notes(caplog, **args) -> list[logging.LogRecord]:
    with caplog.at_level(logging.INFO, logger="pdcore.server.startup_notes"):
        log_flag_notes(ServerArgs(**args))
    return [r for r in caplog.records if r.name == "pdcore.server.startup_notes"]


def test_fake_backend_logs_one_warning_that_outputs_are_not_real(caplog):
    records = notes(caplog, disaggregation_mode="decode", disaggregation_transfer_backend="fake")
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, FAKE_BACKEND_WARNING)
    ], "a fake-backend server must say loudly, once, that it serves garbage"
    assert "NOT real" in FAKE_BACKEND_WARNING and "testing" in FAKE_BACKEND_WARNING


def test_real_backend_and_null_mode_log_nothing(caplog):
    assert notes(caplog, disaggregation_mode="decode") == []
    assert notes(caplog, disaggregation_transfer_backend="fake") == [], "unused in null mode"


def test_trust_remote_code_logs_that_it_has_no_effect(caplog):
    records = notes(caplog, trust_remote_code=True)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, TRUST_REMOTE_CODE_NOTE)
    ]
    assert "no effect" in TRUST_REMOTE_CODE_NOTE and "never runs code" in TRUST_REMOTE_CODE_NOTE


def test_failed_plugin_and_name_conflict_each_log_one_warning(caplog):
    reg = Registry.discover(
        entry_points=[
            failing_ep("broken", "acme-broken", ImportError("libacme.so: cannot open")),
            ep("acme", "acme-attn", attention_plugin("torch")),
        ],
        env={},
    )
    with caplog.at_level(logging.INFO, logger="pdcore.server.startup_notes"):
        log_plugin_notes(reg)
    records = [r for r in caplog.records if r.name == "pdcore.server.startup_notes"]
    assert [r.levelno for r in records] == [logging.WARNING] * 2, [r.getMessage() for r in records]
    failed, conflict = (r.getMessage() for r in records)
    assert "acme-broken 1.0" in failed and "ImportError: libacme.so" in failed, failed
    assert "CONFLICT" in conflict and "acme-attn 1.0" in conflict, conflict
