"""Taking a TCP port to listen on, with an error that names the flag that chose it."""

from __future__ import annotations

import os
import socket

from pdcore.errors import ConfigError


def listen_socket(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A listening socket on ``host:port`` (taken now, handed to uvicorn later), or a
    ``ConfigError`` naming ``flag`` when the port is busy or the host is not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise ConfigError(flag, f"cannot listen on {host}:{port}: {why}") from None


def port_busy(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (an address-reusing server's view),
    or None if it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            return e.strerror or str(e)
    return None
