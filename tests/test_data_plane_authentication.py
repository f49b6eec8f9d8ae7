"""A transfer backend says whether its data plane authenticates peers.

Spec: ``--disaggregation-secret`` seals the PD control plane only. A
``TransferBackend`` that does not declare ``data_plane_authenticated=True`` is
listed by ``pdcore plugins`` (table and ``--json``) with "data plane
unauthenticated: keep on a private network", and gets a start-up warning when a
secret is set; one that declares it gets neither.
"""

from __future__ import annotations

from fakes import ep, module_with

from pdcore.disaggregation.transfer import (
    UNAUTHENTICATED_DATA_PLANE,
    TransferBackend,
    unauthenticated_data_plane_warning,
)
from pdcore.plugins_table import format_table, plugin_rows
from pdcore.registry import Registry


def backend(name: str, **fields) -> TransferBackend:
    return TransferBackend(name=name, factory=lambda cfg: None, **fields)


def rows_for(*backends: TransferBackend) -> tuple[dict[str, dict], Registry]:
    module = module_with(pdcore_transfer_backends=lambda: list(backends))
    registry = Registry.discover(entry_points=[ep("third", "pdcore-third", module)], env={})
    return {r["name"]: r for r in plugin_rows(registry) if r["kind"] == "transfer"}, registry


def test_a_backend_that_declares_nothing_is_listed_as_unauthenticated():
    rows, _ = rows_for(backend("plain"))
    row = rows["plain"]
    assert row["data_plane_authenticated"] is False, row
    assert row["detail"].endswith(UNAUTHENTICATED_DATA_PLANE), (
        f"users must not assume the secret protects KV bytes: {row['detail']!r}"
    )


def test_a_backend_that_authenticates_its_peers_is_listed_without_the_note():
    rows, registry = rows_for(backend("sealed", data_plane_authenticated=True))
    row = rows["sealed"]
    assert row["data_plane_authenticated"] is True, row
    assert UNAUTHENTICATED_DATA_PLANE not in row["detail"], row
    table = format_table(plugin_rows(registry))
    line = next(x for x in table.splitlines() if " sealed " in x)
    assert UNAUTHENTICATED_DATA_PLANE not in line, line


def test_the_note_follows_the_availability_reason_in_the_table():
    _, registry = rows_for(backend("plain"))
    line = next(x for x in format_table(plugin_rows(registry)).splitlines() if " plain " in x)
    assert line.rstrip().endswith(UNAUTHENTICATED_DATA_PLANE), line


def test_the_start_warning_names_the_backend_and_the_boundary():
    warning = unauthenticated_data_plane_warning(backend("plain"))
    assert "--disaggregation-secret" in warning and "plain" in warning, warning
    assert "private network" in warning, warning
    assert unauthenticated_data_plane_warning(backend("x", data_plane_authenticated=True)) == ""
