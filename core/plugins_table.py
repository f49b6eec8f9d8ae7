"""``pdcore plugins``: every registered backend, who provides it, and whether it runs here."""

from __future__ import annotations

import json

from pdcore.registry import KINDS, Registry


def plugin_rows(registry: Registry) -> list[dict]:
    """One row per registration, plus one per skipped or failed plugin and per
    third-party entry ignored because a built-in or first-party plugin owns its
    name; a transfer backend's row says whether its data plane authenticates peers."""
    conflicts = registry.conflicts()
    rows = []
    for reg in registry.all():
        avail = registry.availability(reg)
        detail = avail.reason
        status = "yes" if avail.ok else "no"
        if (reg.kind, reg.name) in conflicts:
            others = [str(r.provider) for r in conflicts[(reg.kind, reg.name)] if r is not reg]
            status = "CONFLICT"
            detail = f"also provided by {', '.join(others)}"
        row = {
            "kind": reg.kind,
            "name": reg.name,
            "provider": str(reg.provider),
            "available": status,
            "detail": detail,
        }
        if reg.kind == "transfer":
            note = reg.spec.data_plane_note()
            row["detail"] = f"{detail}; {note}" if detail and note else detail or note
            row["data_plane_authenticated"] = reg.spec.data_plane_authenticated
        rows.append(row)
    for clash in registry.clashes:
        ignored = clash.ignored
        rows.append(
            {
                "kind": ignored.kind,
                "name": ignored.name,
                "provider": str(ignored.provider),
                "available": "CONFLICT",
                "detail": str(clash),
            }
        )
    for p in registry.problems:
        rows.append(
            {
                "kind": "plugin",
                "name": p.provider.plugin,
                "provider": str(p.provider),
                "available": "skipped" if p.stage == "skipped" else "FAILED",
                "detail": p.message
                if p.stage in ("skipped", "load")
                else f"{p.stage}: {p.message}",
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    headers = {
        "kind": "KIND",
        "name": "NAME",
        "provider": "PROVIDED BY",
        "available": "AVAILABLE",
        "detail": "DETAIL",
    }
    widths = {
        k: max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in headers.items()
    }
    cols = list(headers)

    def line(values: dict) -> str:
        return "  ".join(values[c].ljust(widths[c]) for c in cols[:-1]) + "  " + values["detail"]

    out = [line(headers)]
    order = {k: i for i, k in enumerate([*KINDS, "plugin"])}
    out += [line(r) for r in sorted(rows, key=lambda r: (order[r["kind"]], r["name"]))]
    return "\n".join(out)


def render(registry: Registry, as_json: bool = False) -> str:
    rows = plugin_rows(registry)
    return json.dumps(rows, indent=2) if as_json else format_table(rows)
