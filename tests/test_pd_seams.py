"""The PD code talks to other objects through their public members only.

The PD queues (``core/scheduler/decode.py``, ``prefill.py``) drive the scheduler,
and the KV managers and their rooms (``core/disaggregation/``) drive each other,
from several threads under one lock. A private member reached from outside its
class (``sched._alloc``, ``sender._fail_locked``, ``mgr._lock``) is a contract
nobody wrote down: renaming it inside the owner breaks the caller, and a
``_locked`` helper called by another object escapes the locking rule. This scan
keeps such reaches from coming back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [
    ROOT / "core" / "scheduler" / "decode.py",
    ROOT / "core" / "scheduler" / "prefill.py",
    *sorted((ROOT / "core" / "disaggregation").glob("*.py")),
]
# NamedTuple's public API is spelled with a leading underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}
# A TransferHandle is the engine's own record of one write: it calls the backend
# primitives (``_poll``, ``_failure_reason``) that plugins implement, and the base
# engine reads back the token it gave the handle. One class pair, one file.
FRIENDS = {
    "core/disaggregation/transfer.py": {
        "self._engine._poll",
        "self._engine._failure_reason",
        "self._engine._forget",
        "handle._token",
    },
}


def private_reaches(source: str, where: str) -> list[str]:
    """``where:line receiver._member`` for every private member read off an object
    other than ``self`` or ``cls`` (dunders are not private)."""
    found = []
    friends = FRIENDS.get(where, set())
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in NAMEDTUPLE_API:
            continue
        receiver = node.value
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            continue
        reach = f"{ast.unparse(receiver)}.{name}"
        if reach not in friends:
            found.append((node.lineno, f"{where}:{node.lineno} {reach}"))
    return [hit for _, hit in sorted(found)]


def test_the_scan_covers_the_pd_queues_and_the_disaggregation_package():
    names = {p.name for p in SCANNED}
    assert {"decode.py", "prefill.py", "kv_manager.py", "sender.py", "receiver.py"} <= names, (
        f"the seam scan lost files it must guard: {sorted(names)}"
    )


def test_the_scan_flags_other_objects_privates_but_not_selfs():
    source = "sched._alloc(3)\nself.mgr._lock\nself._own\ntask._replace(a=1)\nx.__class__\n"
    assert private_reaches(source, "sample.py") == [
        "sample.py:1 sched._alloc",
        "sample.py:2 self.mgr._lock",
    ], "a reach through self.mgr is another object's private; self's own and NamedTuple's are not"


def test_pd_code_uses_only_public_members_of_other_objects():
    reaches = [
        hit
        for path in SCANNED
        for hit in private_reaches(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert reaches == [], (
        "PD code reaches into other objects' private members; give the owner a "
        "documented public method instead:\n" + "\n".join(reaches)
    )
