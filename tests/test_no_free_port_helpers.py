"""No "bind port 0, read the number, close the socket" helper outside ``pdcore.up.ports``.

That pattern races: the port is free when it is read and may be taken before the
child process binds it. ``pdcore.up.ports`` reserves ports instead. A socket bound to
port 0 that is kept (listened on, or handed to a server) is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("core", "plugins", "tests", "bench")
ALLOWED = {ROOT / "core" / "up" / "ports.py"}


def _calls(node: ast.AST, method: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == method
    ]


def _binds_port_zero(node: ast.AST) -> bool:
    for call in _calls(node, "bind"):
        addr = call.args[0] if call.args else None
        if isinstance(addr, ast.Tuple) and len(addr.elts) == 2:
            port = addr.elts[1]
            if isinstance(port, ast.Constant) and port.value == 0:
                return True
    return False


def _closed_after_reading(node: ast.AST, closes: bool) -> bool:
    """Binds port 0, reads the number, closes the socket, never listens on it."""
    return (
        _binds_port_zero(node)
        and bool(_calls(node, "getsockname"))
        and not _calls(node, "listen")
        and closes
    )


def free_port_helpers(source: str) -> list[int]:
    """Line numbers of bind-0-then-close code in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.With) and _closed_after_reading(node, closes=True):
            found.append(node.lineno)
        elif isinstance(node, ast.FunctionDef) and not any(
            isinstance(n, ast.With) for n in ast.walk(node)
        ):
            if _closed_after_reading(node, closes=bool(_calls(node, "close"))):
                found.append(node.lineno)
    return found


RACY_WITH = """
def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
"""
RACY_CLOSE = """
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
"""
KEPT = """
def serve_anywhere():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        serve(s, s.getsockname()[1])
"""


def test_the_scan_recognises_the_pattern():
    assert free_port_helpers(RACY_WITH), "a with-block free_port must be caught"
    assert free_port_helpers(RACY_CLOSE), "an explicit close() free_port must be caught"
    assert not free_port_helpers(KEPT), "a socket that is listened on is not a race"


def test_no_free_port_helper_outside_the_ports_module():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path in ALLOWED or ".venv" in path.parts:
                continue
            for line in free_port_helpers(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, (
        "bind-to-port-0-then-close races with other processes; use "
        f"pdcore.up.ports.reserve()/pick_port() instead: {offenders}"
    )
