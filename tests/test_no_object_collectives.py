"""No rank ever unpickles what another process sends it.

``torch.distributed``'s object collectives (and ``pickle``/``torch.load`` on
received bytes) let whoever reaches ``--dist-init-addr`` run code in a rank.
Everything ranks trade goes through ``pdcore.distributed.wire`` (typed msgpack);
this scan keeps the unsafe calls from coming back into the core or the plugins.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("core", "plugins")

FORBIDDEN = {
    "broadcast_object_list": r"\bbroadcast_object_list\b",
    "all_gather_object": r"\ball_gather_object\b",
    "gather_object": r"\bgather_object\b",
    "scatter_object_list": r"\bscatter_object_list\b",
    "send_object_list/recv_object_list": r"\b(send|recv)_object_list\b",
    "pickle": r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill)\b|\b(c?pickle|dill)\.loads?\(",
    "zmq pyobj": r"\b(send|recv)_pyobj\(",
    "torch.load without weights_only=True": r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)",
}


def _sources() -> list[Path]:
    files = []
    for top in SCANNED:
        files += [p for p in (ROOT / top).rglob("*.py") if "/tests/" not in p.as_posix()]
    return files


def _hits(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.MULTILINE)
    out = []
    for path in _sources():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if rx.search(line):
                out.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return out


def test_the_scan_sees_the_sources():
    names = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert "core/distributed/wire.py" in names, "the scan must cover core/ (did the layout move?)"
    assert any(n.startswith("plugins/") for n in names), "the scan must cover plugins/"


def test_the_patterns_catch_what_they_name():
    rx = {k: re.compile(v, re.MULTILINE) for k, v in FORBIDDEN.items()}
    assert rx["broadcast_object_list"].search("dist.broadcast_object_list(box, src=0)")
    assert rx["gather_object"].search("dist.gather_object(obj, out, dst=0)")
    assert rx["pickle"].search("import pickle") and rx["pickle"].search("x = pickle.loads(b)")
    assert rx["torch.load without weights_only=True"].search("torch.load(f)")
    assert not rx["torch.load without weights_only=True"].search(
        "torch.load(f, weights_only=True)"
    ), "a safe torch.load must not be flagged"


def test_no_object_collectives_or_pickle_in_core_and_plugins():
    found = {name: _hits(p) for name, p in FORBIDDEN.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, (
        f"ranks must trade typed messages (pdcore.distributed.wire), never pickled objects: {found}"
    )
